"""MCP servers as tool sources (`[mcp.NAME]`): `mcp_server.py`, built with the official
`mcp` package, behind a real `enclave-broker`, over stdio (the broker starts it) and over
streamable HTTP (started here on a free port); a server that is down; a tool that never
answers; reconnecting after the HTTP server restarts and after the stdio server dies."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from enclave_client import EnclaveClient

from conftest import start_broker

MCP_SERVER = Path(__file__).resolve().parents[1] / "mcp_server.py"
LIST_TIMEOUT = 60.0
# Each server's tools, as the broker lists them (`NAME:tool`).
TOOLS = ["add", "big", "crash", "echo", "environment", "fail", "hang", "is_secret", "shout", "stats"]
SECRET = "mcp-secret-value-4f1c9a"
TOOL_TIMEOUT_MS = 1500
WEB_MAX_RESULT = 65536


def toml_str(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpMcpServer:
    """`mcp_server.py --http` in a subprocess; ready once it printed its port."""

    def __init__(self, log: Path, port: int = 0):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(MCP_SERVER), "--http", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),
            text=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            line = ""
        if not line.startswith("listening on "):
            self.stop()
            pytest.fail(f"mcp_server.py --http did not start: {line!r}; its log:\n{log.read_text()}")
        self.port = int(line.split()[-1])
        if port:
            assert self.port == port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def stdio_section(name: str, extra: str = "", *args: str) -> str:
    command = ", ".join(toml_str(p) for p in [sys.executable, str(MCP_SERVER), "--stdio", *args])
    return (
        f"[mcp.{name}]\ncommand = [{command}]\n"
        f'env = {{ EXPECTED_SECRET = {toml_str(SECRET)}, GREETING = "hello" }}\n'
        f"timeout_ms = {TOOL_TIMEOUT_MS}\n{extra}\n"
    )


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    server = HttpMcpServer(tmp_path_factory.mktemp("mcp-web") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    """An HTTP server the restart test stops and starts again (same port)."""
    holder = {"server": HttpMcpServer(tmp_path_factory.mktemp("mcp-flaky") / "server.log")}
    yield holder
    holder["server"].stop()


@pytest.fixture(scope="module")
def mcp_broker(tmp_path_factory, web, flaky):
    tmp = tmp_path_factory.mktemp("mcp-broker")
    (tmp / "secrets.toml").write_text(f"mcp_token = {toml_str(SECRET)}\n")
    down = free_port()  # nothing listens there
    config = (
        '[tools."secrets:get"]\nfile = "secrets.toml"\n'
        '[tools."secrets:get".secrets.mcp_token]\n'
        'hosts = ["api.example.com"]\ninject = { header = "Authorization" }\n\n'
        + stdio_section("stdio")
        + stdio_section("secret", 'secrets = ["mcp_token"]')
        + stdio_section("crashy")
        + f"[mcp.web]\nurl = {toml_str(web.url)}\ntimeout_ms = {TOOL_TIMEOUT_MS}\n"
        + f"max_result_bytes = {WEB_MAX_RESULT}\n\n"
        + f"[mcp.flaky]\nurl = {toml_str(flaky['server'].url)}\n\n"
        + f'[mcp.down]\nurl = "http://127.0.0.1:{down}/mcp"\n'
    )
    path = tmp / "broker.toml"
    path.write_text(config)
    server = start_broker(tmp, "--config", path)
    server.config_path = path
    try:
        with EnclaveClient(server.addr, server.fingerprint) as client:
            wait_for_tools(client, *(f"{s}:{t}" for s in ("stdio", "secret", "crashy", "web", "flaky") for t in TOOLS))
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(mcp_broker):
    with EnclaveClient(mcp_broker.addr, mcp_broker.fingerprint) as client:
        yield client


def list_tools(client: EnclaveClient) -> dict:
    """`listTools()`, as a script sees it."""
    return {t["name"]: t for t in run(client, "return await listTools()")}


def wait_for_tools(client: EnclaveClient, *names: str) -> dict:
    deadline = time.monotonic() + LIST_TIMEOUT
    while True:
        tools = list_tools(client)
        if set(names) <= tools.keys():
            return tools
        assert time.monotonic() < deadline, f"never listed: {sorted(set(names) - tools.keys())}"
        time.sleep(0.1)


def run(client: EnclaveClient, code: str, **options):
    options.setdefault("level", "STANDARD")
    out = client.execute(code, **options)
    assert out.ok, f"{out.error}"
    return out.value


def attempt(client: EnclaveClient, call: str) -> dict:
    """Runs `call` (an expression awaiting one tool) in a script; its value or its error."""
    return run(
        client,
        f"try {{ return {{value: await {call}}} }} catch (e) {{ return {{error: e.message, name: e.name}} }}",
    )


@pytest.mark.parametrize("server", ["stdio", "web"])
def test_round_trips(client, server):
    value = run(
        client,
        f"""
        return [
          await callTool('{server}:echo', {{text: 'hi', n: 2}}),
          await callTool('{server}:add', {{a: 2, b: 3}}),
          await callTool('{server}:shout', {{text: 'quiet'}}),
          await callTool('{server}:is_secret', {{text: 'nope'}}),
        ]""",
    )
    assert value == [
        {"text": "hi", "n": 2},  # a JSON text block, parsed
        {"result": 5},  # structuredContent, as the server gives it
        "QUIET",  # a text block that is not JSON
        {"result": False},
    ]


@pytest.mark.parametrize("server", ["stdio", "web"])
def test_list_tools_shows_the_servers_tools_and_schemas(client, server):
    tools = list_tools(client)
    mine = sorted(n.split(":", 1)[1] for n in tools if n.startswith(f"{server}:"))
    assert mine == TOOLS
    echo = tools[f"{server}:echo"]
    assert echo["description"] == "Returns its arguments: {text, n}."
    assert echo["inputSchema"]["type"] == "object"
    assert echo["inputSchema"]["required"] == ["text"]
    assert echo["inputSchema"]["properties"]["n"] == {"default": 1, "title": "N", "type": "integer"}
    assert tools[f"{server}:add"]["inputSchema"]["required"] == ["a", "b"]


@pytest.mark.parametrize("server", ["stdio", "web"])
def test_schema_violations_never_reach_the_server(client, server):
    before = run(client, f"return await callTool('{server}:stats', {{}})")["seen"]
    for args, where in [("{text: 5}", "/text"), ("{}", ""), ("{text: 'x', n: 'two'}", "/n")]:
        out = attempt(client, f"callTool('{server}:echo', {args})")
        assert out["name"] == "Error"
        assert out["error"].startswith(
            f"tool {server}:echo failed: arguments do not match the tool's schema"
        ), out
        if where:
            assert f" at {where}:" in out["error"]
    after = run(client, f"return await callTool('{server}:stats', {{}})")["seen"]
    assert after == before


@pytest.mark.parametrize("server", ["stdio", "web"])
def test_a_tools_error_is_a_catchable_error_with_its_message(client, server):
    out = attempt(client, f"callTool('{server}:fail', {{message: 'the table is locked'}})")
    # The text of the result's content, as the server wrote it (the SDK adds the prefix).
    assert out == {
        "name": "Error",
        "error": f"tool {server}:fail failed: Error executing tool fail: the table is locked",
    }


@pytest.mark.parametrize("server", ["stdio", "web"])
def test_a_tool_that_never_answers_ends_only_that_call(client, server):
    started = time.monotonic()
    value = run(
        client,
        f"""
        let error;
        try {{ await callTool('{server}:hang', {{}}) }} catch (e) {{ error = e.message }}
        return {{error, after: await callTool('{server}:add', {{a: 1, b: 1}})}}""",
        level="STRICT",  # a 5 s job
    )
    elapsed = time.monotonic() - started
    assert value == {
        "error": f"tool {server}:hang failed: no answer within {TOOL_TIMEOUT_MS} ms",
        "after": {"result": 2},
    }
    assert TOOL_TIMEOUT_MS / 1000 <= elapsed < 5, elapsed
    # The broker told the server the call was cancelled (`notifications/cancelled`).
    deadline = time.monotonic() + 10
    while True:
        stats = run(client, f"return await callTool('{server}:stats', {{}})")
        if stats["hang_cancelled"] == stats["hang_started"]:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)


def test_results_over_max_result_bytes_are_refused(client):
    value = run(
        client,
        f"""
        const small = await callTool('web:big', {{n: 1000}});
        let error;
        try {{ await callTool('web:big', {{n: {WEB_MAX_RESULT}}}) }} catch (e) {{ error = e.message }}
        return {{small: small.length, error}}""",
    )
    assert value["small"] == 1000
    assert value["error"] == (
        f"tool web:big failed: the result is {WEB_MAX_RESULT + 2} bytes of JSON; "
        f"at most {WEB_MAX_RESULT} can be returned"
    )


def test_a_server_that_is_down_gives_a_clear_error_and_the_broker_keeps_serving(client):
    value = run(
        client,
        """
        let error;
        try { await callTool('down:anything', {}) } catch (e) { error = e.message }
        return {error, echo: await callTool('echo', {ok: true}), web: await callTool('web:add', {a: 2, b: 2})}""",
    )
    assert value["error"] == (
        "tool down:anything failed: mcp.down has not listed its tools yet (it is unreachable or starting)"
    )
    assert value["echo"] == {"ok": True} and value["web"] == {"result": 4}
    assert not any(n.startswith("down:") for n in list_tools(client))


def test_errors_name_no_address_or_command(client, mcp_broker, web, flaky):
    """What a script learns of a failure names the server, never its URL, port or command."""
    out = attempt(client, "callTool('down:x', {})")
    out2 = attempt(client, "callTool('web:nope', {})")
    for message in (out["error"], out2["error"]):
        assert "127.0.0.1" not in message and "http" not in message
        assert str(MCP_SERVER) not in message and sys.executable not in message
    assert out2["error"].startswith("tool web:nope failed: unknown tool `web:nope`; mcp.web has: web:add")


def test_secrets_reach_a_server_as_handles_unless_it_is_given_them(client):
    value = run(
        client,
        """
        const token = await callTool('secrets:get', {key: 'mcp_token'});
        return {
          token,
          plain: await callTool('stdio:is_secret', {text: token}),
          given: await callTool('secret:is_secret', {text: token}),
          echoed: await callTool('secret:echo', {text: 'Bearer ' + token}),
        }""",
    )
    assert value["token"].startswith("enclave-secret:")
    assert value["plain"] == {"result": False}  # the server saw the handle
    assert value["given"] == {"result": True}  # `secrets = ["mcp_token"]`: the value
    # The server echoed the value; the broker scrubbed it back to the handle.
    assert value["echoed"] == {"text": "Bearer " + value["token"], "n": 1}
    assert SECRET not in json.dumps(value)


def test_a_stdio_server_gets_only_its_own_environment(client, mcp_broker):
    value = run(
        client,
        """return {
          greeting: await callTool('stdio:environment', {name: 'GREETING'}),
          path: await callTool('stdio:environment', {name: 'PATH'}),
          rust_log: await callTool('stdio:environment', {name: 'RUST_LOG'}),
        }""",
    )
    assert value["greeting"] == {"result": "hello"}
    assert value["path"]["result"]  # inherited: PATH, HOME, USER, ...
    assert value["rust_log"] == {"result": None}  # the broker's RUST_LOG is not passed on
    # Its stderr goes to the broker's log.
    assert any("mcp server stderr: mcp_server.py: serving MCP on stdio" in line for line in mcp_broker.lines)


def test_the_http_transport_recovers_after_the_server_restarts(client, flaky, tmp_path):
    assert run(client, "return await callTool('flaky:add', {a: 1, b: 2})") == {"result": 3}
    old = flaky["server"]
    old.stop()
    out = attempt(client, "callTool('flaky:add', {a: 1, b: 2})")
    assert out["error"] == "tool flaky:add failed: mcp server `flaky` is unreachable", out
    flaky["server"] = HttpMcpServer(tmp_path / "restarted.log", port=old.port)
    # The first call after the restart reconnects (new session) and succeeds.
    assert run(client, "return await callTool('flaky:add', {a: 2, b: 2})") == {"result": 4}


def test_a_stdio_server_that_dies_is_started_again(client):
    first = run(client, "return await callTool('crashy:stats', {})")["pid"]
    out = attempt(client, "callTool('crashy:crash', {})")
    assert out["error"] == (
        "tool crashy:crash failed: mcp server `crashy` closed the connection before answering"
    ), out
    value = run(client, "return await callTool('crashy:add', {a: 20, b: 22})")
    assert value == {"result": 42}
    second = run(client, "return await callTool('crashy:stats', {})")["pid"]
    assert second != first
    wait_until_gone(first)


def test_stdio_servers_end_with_the_broker(tmp_path):
    """A stdio server is the broker's child: the broker kills it when it shuts down (this one
    would stay 60 s after its stdin closed)."""
    path = tmp_path / "broker.toml"
    path.write_text(stdio_section("solo", "", "--linger", "60"))
    broker = start_broker(tmp_path, "--config", path)
    try:
        with EnclaveClient(broker.addr, broker.fingerprint) as client:
            wait_for_tools(client, "solo:stats")
            pid = run(client, "return await callTool('solo:stats', {})")["pid"]
        os.kill(pid, 0)
    finally:
        broker.stop()
    wait_until_gone(pid)


def wait_until_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Killed but not yet reaped by its parent: a zombie, which counts as ended.
        if _is_zombie(pid):
            return
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return False
