"""Tool services: `tool_server.py`'s `enclave.v1.ToolService`, served in this process on a
free port, behind a real `enclave-broker` whose config routes `py:*` to it; and the sealed
`ListTools` call (PROTOCOL.md §10.5)."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tool_server
from enclave_client import EnclaveClient, ToolInfo
from enclave_client.protocol import Kind

from conftest import start_broker_with_config

LIST_TIMEOUT = 30.0
SCHEMA_ERROR = "tool py:add failed: arguments do not match the tool's schema"


def wait_for_tools(client: EnclaveClient, *names: str) -> dict[str, ToolInfo]:
    """Polls `list_tools()` until the broker has listed `names` (it lists a service in
    the background after start-up)."""
    deadline = time.monotonic() + LIST_TIMEOUT
    while True:
        tools = {t.name: t for t in client.list_tools()}
        if set(names) <= tools.keys():
            return tools
        assert time.monotonic() < deadline, f"{names} never listed; the broker has {sorted(tools)}"
        time.sleep(0.05)


def run(client: EnclaveClient, code: str):
    out = client.execute(code)
    assert out.ok, f"{out.error}"
    return out.value


@pytest.fixture(scope="module")
def service():
    """The example tool service, on 127.0.0.1 port 0."""
    service = tool_server.ToolService()
    server, port = tool_server.serve("127.0.0.1:0", service)
    assert port > 0
    service.port = port
    yield service
    server.stop(grace=None)


@pytest.fixture(scope="module")
def tools_broker(tmp_path_factory, service):
    """A broker whose `[tool_services.py]` is `service` (answering the default `py:*`),
    once it has listed its tools."""
    server = start_broker_with_config(
        tmp_path_factory.mktemp("tools-broker"),
        f'[tool_services.py]\ngrpc = "http://127.0.0.1:{service.port}"\n',
    )
    try:
        with EnclaveClient(server.addr, server.fingerprint) as client:
            wait_for_tools(client, *tool_server.TOOLS)
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(tools_broker, service):
    service.calls.clear()
    with EnclaveClient(tools_broker.addr, tools_broker.fingerprint) as client:
        yield client


def test_record_kinds_match_the_proto(client):
    pb = client.pb.broker_pb2
    assert Kind.LIST_TOOLS_REQUEST == pb.RECORD_KIND_LIST_TOOLS_REQUEST == 10
    assert Kind.LIST_TOOLS_RESULT == pb.RECORD_KIND_LIST_TOOLS_RESULT == 11


def test_list_tools_shows_the_services_tools_next_to_echo(client):
    tools = client.list_tools()
    assert [t.name for t in tools] == ["echo", "py:add", "py:divide", "py:words"]
    by_name = {t.name: t for t in tools}
    assert by_name["echo"].description and by_name["echo"].input_schema == {}
    for name, (description, schema, _) in tool_server.TOOLS.items():
        assert by_name[name].description == description
        assert by_name[name].input_schema == schema
    assert by_name["py:add"].input_schema == {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    assert by_name["py:words"].input_schema["required"] == ["text"]


def test_list_tools_on_a_broker_without_services(broker):
    with EnclaveClient(broker.addr, broker.fingerprint) as client:
        names = [t.name for t in client.list_tools()]
    assert "echo" in names and not any(n.startswith("py:") for n in names)
    assert names == sorted(names)


def test_list_tools_handshakes_again_when_the_broker_forgot_the_session(client):
    """Like the other unary calls: UNAUTHENTICATED (here: the session was closed behind
    the client's back) means one new handshake and one more try."""
    first = client.session
    pb = client.pb.broker_pb2
    record = first.seal_request(Kind.CLOSE_REQUEST, pb.CloseSessionRequest().SerializeToString())
    client.stub.CloseSession(client._to_proto(record), timeout=10)
    assert [t.name for t in client.list_tools()][:2] == ["echo", "py:add"]
    assert client.session is not first


def test_scripts_call_the_services_tools(client, service):
    value = run(
        client,
        """return [
          await callTool('py:add', {a: 2, b: 3}),
          await callTool('py:add', {a: 0.5, b: -2}),
          await callTool('py:words', {text: 'the quick  brown\\nfox'}),
          await callTool('py:divide', {a: 7, b: 2}),
          await callTool('echo', {still: 'the broker'}),
        ];""",
    )
    assert value == [5, -1.5, 4, 3.5, {"still": "the broker"}]
    assert service.calls == [
        ("py:add", {"a": 2, "b": 3}),
        ("py:add", {"a": 0.5, "b": -2}),
        ("py:words", {"text": "the quick  brown\nfox"}),
        ("py:divide", {"a": 7, "b": 2}),
    ]


def test_arguments_that_violate_the_schema_never_reach_the_service(client, service):
    messages = run(
        client,
        """const out = [];
        for (const args of [{a: 'x', b: 1}, {a: 1}, {a: 1, b: 2, c: 3}, null]) {
          try { await callTool('py:add', args); out.push('no error'); }
          catch (e) { out.push(e instanceof Error ? e.message : 'not an Error'); }
        }
        return out;""",
    )
    assert messages[0] == f'{SCHEMA_ERROR} at /a: "x" is not of type "number"'
    assert messages[1].startswith(SCHEMA_ERROR) and '"b" is a required property' in messages[1]
    assert messages[2].startswith(SCHEMA_ERROR) and "'c' was unexpected" in messages[2]
    assert messages[3] == f'{SCHEMA_ERROR}: null is not of type "object"'
    assert service.calls == []


def test_the_services_error_is_a_catchable_error(client, service):
    value = run(
        client,
        """let caught;
        try { await callTool('py:divide', {a: 1, b: 0}); }
        catch (e) { caught = [e instanceof Error, e.message]; }
        return [caught, await callTool('py:divide', {a: 1, b: 4})];""",
    )
    assert value == [[True, "tool py:divide failed: division by zero"], 0.25]
    assert service.calls == [("py:divide", {"a": 1, "b": 0}), ("py:divide", {"a": 1, "b": 4})]


def test_an_uncaught_tool_error_fails_the_job(client):
    out = client.execute("return await callTool('py:divide', {a: 1, b: 0});")
    assert not out.ok
    assert out.error.message.endswith("tool py:divide failed: division by zero"), out.error


def test_promise_all_over_several_calls(client, service):
    value = run(
        client,
        """return await Promise.all([
          ...[1, 2, 3, 4, 5, 6].map(i => callTool('py:add', {a: i, b: 10 * i})),
          callTool('py:words', {text: 'one two three'}),
          callTool('py:divide', {a: 1, b: 0}).catch(e => e.message),
        ]);""",
    )
    assert value == [11, 22, 33, 44, 55, 66, 3, "tool py:divide failed: division by zero"]
    assert sorted(service.calls, key=json.dumps) == sorted(
        [("py:add", {"a": i, "b": 10 * i}) for i in range(1, 7)]
        + [("py:words", {"text": "one two three"}), ("py:divide", {"a": 1, "b": 0})],
        key=json.dumps,
    )


def test_stream_events_name_the_services_tools(client):
    events = list(
        client.execute_stream(
            "await callTool('py:add', {a: 1, b: 1});"
            "return await callTool('py:divide', {a: 1, b: 0}).catch(() => 'caught');"
        )
    )
    calls = [e.tool_call for e in events if e.WhichOneof("event") == "tool_call"]
    results = [e.tool_result for e in events if e.WhichOneof("event") == "tool_result"]
    assert [(c.name, json.loads(c.args_json)) for c in calls] == [
        ("py:add", {"a": 1, "b": 1}),
        ("py:divide", {"a": 1, "b": 0}),
    ]
    assert [(r.name, r.is_error) for r in results] == [("py:add", False), ("py:divide", True)]
    assert events[-1].final.result_json == '"caught"'


def test_answers_limits_the_names_a_service_may_answer(tmp_path, service):
    """`answers` narrower than what the service lists: the other tools are ignored."""
    server = start_broker_with_config(
        tmp_path,
        f'[tool_services.py]\ngrpc = "http://127.0.0.1:{service.port}"\nanswers = ["py:add"]\n',
    )
    try:
        with EnclaveClient(server.addr, server.fingerprint) as client:
            tools = wait_for_tools(client, "py:add")
            assert sorted(tools) == ["echo", "py:add"]
            service.calls.clear()
            value = run(
                client,
                "let e; try { await callTool('py:words', {text: 'a'}); } catch (err) { e = err.message; }"
                "return [await callTool('py:add', {a: 1, b: 2}), e];",
            )
    finally:
        server.stop()
    assert value[0] == 3
    assert value[1].startswith("tool py:words failed: unknown tool `py:words`"), value[1]
    assert service.calls == [("py:add", {"a": 1, "b": 2})]


def test_the_command_line_lists_and_calls_the_tools(tools_broker):
    def cli(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "enclave_client", "--broker", tools_broker.addr,
             "--pin", tools_broker.fingerprint, *args],
            cwd=Path(tool_server.__file__).parent, capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    listed = [json.loads(line) for line in cli("--tools").splitlines()]
    assert [t["name"] for t in listed] == ["echo", "py:add", "py:divide", "py:words"]
    assert listed[1]["input_schema"]["required"] == ["a", "b"]
    assert cli("return await callTool('py:add', {a: 2, b: 3})") == "5\n"


def test_tool_server_runs_as_a_program():
    """`python3 tool_server.py --listen 127.0.0.1:0` prints its address; its `List` and
    `Call` answer over plain gRPC, as the broker calls them."""
    import grpc

    proc = subprocess.Popen(
        [sys.executable, "tool_server.py", "--listen", "127.0.0.1:0"],
        cwd=Path(tool_server.__file__).parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        first_line = concurrent.futures.ThreadPoolExecutor(1).submit(proc.stdout.readline)
        line = first_line.result(timeout=60)  # it generates its stubs first
        assert line.startswith("tool server serving addr=127.0.0.1:"), line
        addr = line.split("addr=", 1)[1].split()[0]
        assert not addr.endswith(":0")
        pb = tool_server.pb
        with grpc.insecure_channel(addr) as channel:
            stub = pb.tools_pb2_grpc.ToolServiceStub(channel)
            listed = stub.List(pb.tools_pb2.ToolServiceListRequest(), timeout=30)
            assert [t.name for t in listed.tools] == list(tool_server.TOOLS)
            call = pb.tools_pb2.ToolCallRequest(name="py:words", args_json='{"text": "a b c"}')
            assert stub.Call(call, timeout=30).result_json == "3"
            call = pb.tools_pb2.ToolCallRequest(name="py:divide", args_json='{"a": 1, "b": 0}')
            assert stub.Call(call, timeout=30).error == "division by zero"
    finally:
        proc.terminate()
        proc.wait(15)
