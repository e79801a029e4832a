"""The added latency of one tool call through each tool source, against the built-in `echo`.

    cargo build -p enclave-broker -p enclave-executor        # in the repository root
    python3 examples/python/bench_tools.py [--jobs N] [--broker PATH]

(with the example's pinned requirements: `pip install -r examples/python/requirements.txt`,
or the venv run-tests.sh makes, `examples/python/build/venv/bin/python`). `--broker` takes
another binary, e.g. `target/release/enclave-broker` after `cargo build --release -p
enclave-broker`; the default is `$CARGO_TARGET_DIR` (or `target`)`/debug/enclave-broker`.

It starts ONE broker (embedded executor, no executors) whose config has every source:

    echo        the built-in tool (the baseline)
    grpc        a gRPC ToolService: tool_server.py's server, in this process (py:add)
    webhook     a webhook: a threading HTTP/1.1 keep-alive server in this process (hook:add)
    mcp-stdio   mcp_server.py --stdio, started by the broker (stdio:add)
    mcp-http    mcp_server.py --http, streamable HTTP, started here (web:add)
    client      a client-provided tool, answered by this client's handler (client:add)

Every job is `return await callTool(TOOL, {a: 2, b: 3})` and every job, echo's too, runs
through the same path, `execute_with_tools` (the bidirectional ExecuteWithTools stream),
declaring the same client tool: so jobs differ only in which tool the script calls, and
"added" (p50 minus echo's p50) is what that one call costs over echo's. All jobs run one at
a time on one session; after a warm-up of `--warmup` jobs per source, `--jobs` jobs per
source run in rounds, one job of each source per round in a shuffled order, so machine
noise hits all sources alike. Each job's time is its wall time at this client: from the
request to the stream's last event. Two reference rows show echo over the other paths
(unary `execute`, `execute_stream`); they are not part of the comparison. On a busy
machine the execute_with_tools rows have a wide p90 (grpcio starts a thread per
bidirectional call to send its requests, and it waits for a CPU); the reference rows, which
start none, stay narrow.

A measurement: it asserts nothing about the times, but stops if a job fails (a failed call
is not a timing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from enclave_client import ClientTool, EnclaveClient  # noqa: E402

import tool_server  # noqa: E402

MCP_SERVER = HERE / "mcp_server.py"
ARGS = "{a: 2, b: 3}"
SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
}
SCHEMA_TOML = (
    '{ type = "object", properties = { a = { type = "number" }, b = { type = "number" } }, '
    'required = ["a", "b"] }'
)
# source -> the tool its jobs call (the comparison: all over execute_with_tools)
SOURCES = {
    "echo": "echo",
    "grpc": "py:add",
    "webhook": "hook:add",
    "mcp-stdio": "stdio:add",
    "mcp-http": "web:add",
    "client": "client:add",
}
# reference rows: echo over the other two paths
REFERENCES = ("echo (execute)", "echo (execute_stream)")
START_TIMEOUT = 180.0
LIST_TIMEOUT = 60.0
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def toml_str(text: str) -> str:
    return json.dumps(text)  # JSON's escapes are TOML's


# -- the webhook ----------------------------------------------------------------------------


class WebhookHandler(BaseHTTPRequestHandler):
    """Answers `{"result": a + b}` at once. HTTP/1.1, so the broker's client keeps the
    connection; Nagle off, so the body is not held back behind the headers' ACK."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        args = json.loads(body)["args"]
        answer = json.dumps({"result": args["a"] + args["b"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def start_webhook() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), WebhookHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# -- processes ------------------------------------------------------------------------------


class Broker:
    """The broker binary, ready once it logged "broker serving"; its stderr is drained."""

    def __init__(self, exe: Path, tmp: Path, config: str):
        (tmp / "broker.toml").write_text(config)
        args = [str(exe), "--listen", "127.0.0.1:0"]
        helptext = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
        if "--http-listen" in helptext:
            args += ["--http-listen", "off"]
        args += ["--identity", str(tmp / "broker.key"), "--config", str(tmp / "broker.toml")]
        env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.lines: list[str] = []
        self.fields: dict[str, str] = {}
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, text=True, errors="replace",
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"{exe} did not start; its log:\n" + "\n".join(self.lines[-40:]))

    def _pump(self):
        for line in self.proc.stderr:
            line = ANSI.sub("", line.rstrip("\n"))
            if len(self.lines) < 10000:
                self.lines.append(line)
            if not self._ready.is_set() and "broker serving" in line:
                self.fields = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
                self._ready.set()

    def stop(self):
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_mcp_http(log: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, str(MCP_SERVER), "--http", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=60)
    except queue.Empty:
        line = ""
    if not line.startswith("listening on "):
        stop_process(proc)
        sys.exit(f"mcp_server.py --http did not start: {line!r}; its log:\n{log.read_text()}")
    return proc, int(line.split()[-1])


def default_broker() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "enclave-broker"


# -- measuring ------------------------------------------------------------------------------


def client_tools() -> dict:
    return {"client:add": ClientTool("Adds a and b.", SCHEMA, lambda args: args["a"] + args["b"])}


def job_runner(client: EnclaveClient, source: str):
    """A function running one job of `source` that returns its wall time in seconds."""
    tools = client_tools()
    if source == "echo (execute)":
        code = f"return await callTool('echo', {ARGS})"

        def run():
            start = time.perf_counter()
            out = client.execute(code)
            elapsed = time.perf_counter() - start
            if not out.ok:
                raise RuntimeError(f"{source}: the job failed: {out.error}")
            return elapsed

        return run

    tool = SOURCES.get(source, "echo")
    code = f"return await callTool('{tool}', {ARGS})"
    stream_only = source == "echo (execute_stream)"

    def run():
        start = time.perf_counter()
        if stream_only:
            events = list(client.execute_stream(code))
        else:
            events = list(client.execute_with_tools(code, tools))
        elapsed = time.perf_counter() - start
        last = events[-1]
        if last.WhichOneof("event") != "final" or last.final.WhichOneof("outcome") != "result_json":
            raise RuntimeError(f"{source}: the job failed: {last}")
        return elapsed

    return run


def wait_for_tools(client: EnclaveClient, names) -> None:
    deadline = time.monotonic() + LIST_TIMEOUT
    while True:
        listed = {t.name for t in client.list_tools()}
        if set(names) <= listed:
            return
        if time.monotonic() > deadline:
            sys.exit(f"the broker never listed {sorted(set(names) - listed)}")
        time.sleep(0.1)


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpus} CPUs (nproc), {model}"


def build_of(exe: Path) -> str:
    parts = exe.resolve().parts
    for build in ("release", "debug"):
        if build in parts:
            return build
    return f"unknown ({exe})"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200, help="measured jobs per source (200)")
    ap.add_argument("--warmup", type=int, default=20, help="warm-up jobs per source (20)")
    ap.add_argument("--broker", type=Path, default=None, help="the enclave-broker binary")
    ap.add_argument("--no-reference", action="store_true", help="skip the two reference rows")
    ap.add_argument("--seed", type=int, default=1, help="for the order within rounds")
    args = ap.parse_args(argv)
    exe = (args.broker or default_broker()).resolve()
    if not exe.is_file():
        sys.exit(f"{exe} not found: build it with `cargo build -p enclave-broker -p enclave-executor`")

    sources = list(SOURCES) + ([] if args.no_reference else list(REFERENCES))
    cleanup = []
    with tempfile.TemporaryDirectory(prefix="enclave-bench-") as tmp:
        tmp = Path(tmp)
        try:
            grpc_server, grpc_port = tool_server.serve("127.0.0.1:0")
            cleanup.append(lambda: grpc_server.stop(grace=None).wait())
            hook = start_webhook()
            cleanup.append(lambda: (hook.shutdown(), hook.server_close()))
            mcp_http, mcp_port = start_mcp_http(tmp / "mcp-http.log")
            cleanup.append(lambda: stop_process(mcp_http))
            stdio = ", ".join(toml_str(p) for p in (sys.executable, str(MCP_SERVER), "--stdio"))
            config = (
                f'[tool_services.py]\ngrpc = "http://127.0.0.1:{grpc_port}"\n\n'
                f'[tool_services.hook]\nwebhook = "http://127.0.0.1:{hook.server_address[1]}/"\n'
                f'[tool_services.hook.tools."hook:add"]\ndescription = "Adds a and b."\n'
                f"input_schema = {SCHEMA_TOML}\n\n"
                f"[mcp.stdio]\ncommand = [{stdio}]\n\n"
                f'[mcp.web]\nurl = "http://127.0.0.1:{mcp_port}/mcp"\n'
            )
            broker = Broker(exe, tmp, config)
            cleanup.append(broker.stop)
            fingerprint = broker.fields["fingerprint"]

            with EnclaveClient(broker.fields["addr"], fingerprint) as client:
                wait_for_tools(client, [t for t in SOURCES.values() if not t.startswith("client:")])
                runners = {s: job_runner(client, s) for s in sources}
                rng = random.Random(args.seed)
                times: dict[str, list[float]] = {s: [] for s in sources}
                load_before = os.getloadavg()
                started = time.monotonic()
                for round_ in range(args.warmup + args.jobs):
                    order = sources[:]
                    rng.shuffle(order)
                    for source in order:
                        elapsed = runners[source]()
                        if round_ >= args.warmup:
                            times[source].append(elapsed)
                took = time.monotonic() - started
                load_after = os.getloadavg()
        finally:
            for stop in reversed(cleanup):
                try:
                    stop()
                except Exception as e:  # cleanup goes on
                    print(f"cleanup: {e}", file=sys.stderr)
    report(args, exe, sources, times, took, load_before, load_after)


def report(args, exe, sources, times, took, load_before, load_after) -> None:
    ms = lambda s: f"{s * 1000:8.2f}"  # noqa: E731
    base = percentile(times["echo"], 50)
    print(f"machine: {machine()}")
    print(f"broker:  {build_of(exe)} build ({exe})")
    print(
        f"jobs:    {args.jobs} per source after {args.warmup} warm-up, one at a time on one "
        f"session, interleaved; {sum(map(len, times.values()))} measured in {took:.1f} s"
    )
    print(
        "load:    1-min load average {:.2f} before, {:.2f} after".format(load_before[0], load_after[0])
    )
    print("path:    every source over execute_with_tools (ExecuteWithTools), one client tool declared")
    print()
    print(f"{'source':<24}{'tool':<12}{'p50 ms':>9}{'added ms':>10}{'p90 ms':>9}")
    for source in sources:
        if source == REFERENCES[0]:
            print("reference: echo over the other paths (added: vs echo over execute_with_tools)")
        t = times[source]
        p50 = percentile(t, 50)
        print(
            f"{source:<24}{SOURCES.get(source, 'echo'):<12}{ms(p50):>9}"
            f"{(p50 - base) * 1000:>+10.2f}{ms(percentile(t, 90)):>9}"
        )


if __name__ == "__main__":
    main()
