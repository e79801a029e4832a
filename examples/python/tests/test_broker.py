"""Against a live `enclave-broker` (embedded executor): both curves, execute, streaming
order, pin, tampering, truncation, rekey, close, client authentication."""

from __future__ import annotations

import concurrent.futures
import copy
import time

import grpc
import pytest

from enclave_client import (
    ClientAuthRequiredError,
    EnclaveClient,
    PinMismatchError,
    RecordError,
    RemoteError,
    TruncatedStreamError,
    generate_identity,
    identity_fingerprint,
    load_identity,
    load_public_key_fingerprint,
)
from enclave_client.protocol import ClientHandshake, Kind, ServerHelloFields

from conftest import start_broker

SUITES = ["x25519", "p256"]


def test_identity_files_match_the_logged_fingerprint(broker):
    """§3: the key file is PKCS#8 PEM with mode 0600, the .pub file SPKI PEM."""
    key = load_identity(broker.identity_path)
    assert identity_fingerprint(key) == broker.fingerprint
    assert load_public_key_fingerprint(str(broker.identity_path) + ".pub") == broker.fingerprint


@pytest.mark.parametrize("suite", SUITES)
def test_execute(broker, suite):
    with EnclaveClient(broker.addr, broker.fingerprint, suite=suite) as client:
        assert client.session.server_fingerprint == broker.fingerprint
        out = client.execute("console.log('hi'); return 6*7")
        assert out.ok and out.value == 42 and out.result_json == "42"
        assert out.console == ["hi"]
        assert out.stats.console_bytes == 2
        out = client.execute("return {sum: input.a + input.b}", input_json='{"a": 1, "b": 2}')
        assert out.value == {"sum": 3}


def test_script_errors_are_in_band(broker):
    pb_codes = None
    with EnclaveClient(broker.addr, broker.fingerprint) as client:
        pb_codes = client.pb.job_pb2
        out = client.execute("console.error('x');\nthrow new TypeError('boom')")
        assert not out.ok and not out.broker_error
        assert out.error.code == pb_codes.ERROR_CODE_SCRIPT_ERROR
        assert out.error.name == "TypeError" and "boom" in out.error.message
        assert out.error.line == 2
        assert out.console == ["x"]
        with pytest.raises(RuntimeError, match="boom"):
            out.value
        out = client.execute("return (")
        assert out.error.code == pb_codes.ERROR_CODE_SYNTAX_ERROR


@pytest.mark.parametrize("suite", SUITES)
def test_stream_events_arrive_in_order(broker, suite):
    code = "for (let i = 0; i < 20; i++) console.log('line', i); console.warn('done'); return 'end'"
    with EnclaveClient(broker.addr, broker.fingerprint, suite=suite) as client:
        events = list(client.execute_stream(code))
        lv = client.pb.job_pb2
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["console"] * 21 + ["final"]
    assert [e.console.text for e in events[:20]] == [f"line {i}" for i in range(20)]
    assert events[20].console.text == "done"
    assert events[20].console.level == lv.CONSOLE_LEVEL_WARN
    assert events[-1].final.result_json == '"end"'


def test_stream_tool_events(broker):
    if not any("echo" in line.split("tools=", 1)[1] for line in broker.lines if "tools=" in line):
        pytest.skip("this broker logs no `echo` tool")
    code = (
        "console.log('before');"
        "const [a, b] = await Promise.all([callTool('echo', {n: 1}), callTool('echo', {n: 2})]);"
        "console.log('after', a.n + b.n); return a.n + b.n"
    )
    with EnclaveClient(broker.addr, broker.fingerprint) as client:
        events = list(client.execute_stream(code))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "console" and events[0].console.text == "before"
    assert kinds[-2:] == ["console", "final"] and events[-2].console.text == "after 3"
    calls = [e.tool_call for e in events if e.WhichOneof("event") == "tool_call"]
    results = [e.tool_result for e in events if e.WhichOneof("event") == "tool_result"]
    assert sorted(c.call_id for c in calls) == sorted(r.call_id for r in results)
    assert {c.name for c in calls} == {"echo"}
    assert not any(r.is_error for r in results)
    # every result comes after its call
    position = {("call", e.tool_call.call_id) if k == "tool_call" else ("result", e.tool_result.call_id): i
                for i, (k, e) in enumerate(zip(kinds, events)) if k in ("tool_call", "tool_result")}
    for c in calls:
        assert position[("call", c.call_id)] < position[("result", c.call_id)]
    assert events[-1].final.result_json == "3"


def test_wrong_pin_is_refused(broker):
    wrong = "sha256:" + "ab" * 32
    client = EnclaveClient(broker.addr, wrong)
    with pytest.raises(PinMismatchError, match="does not match the pinned fingerprint") as e:
        client.connect()
    assert e.value.actual == broker.fingerprint and e.value.expected == wrong
    assert client.session is None
    client.shutdown()


def test_pin_accepts_upper_case_and_whitespace(broker):
    pin = "  sha256:" + broker.fingerprint[7:].upper() + "\n"
    with EnclaveClient(broker.addr, pin) as client:
        assert client.execute("return 1").value == 1


def _send(client, method, record):
    return getattr(client.stub, method)(client._to_proto(record), timeout=30)


def _tampered(record, **changes):
    bad = copy.copy(record)
    for k, v in changes.items():
        setattr(bad, k, v(getattr(bad, k)) if callable(v) else v)
    return bad


def _flip(data: bytes, i: int = 0) -> bytes:
    b = bytearray(data)
    b[i] ^= 0x01
    return bytes(b)


TAMPERINGS = {
    "ciphertext": ("Execute", dict(ciphertext=_flip), grpc.StatusCode.UNAUTHENTICATED),
    "tag": ("Execute", dict(ciphertext=lambda c: _flip(c, len(c) - 1)), grpc.StatusCode.UNAUTHENTICATED),
    "seq": ("Execute", dict(seq=lambda s: s + 500), grpc.StatusCode.UNAUTHENTICATED),
    "next epoch": ("Execute", dict(epoch=lambda e: e + 1), grpc.StatusCode.UNAUTHENTICATED),
    "session id": ("Execute", dict(session_id=_flip), grpc.StatusCode.UNAUTHENTICATED),
    "epoch two ahead": ("Execute", dict(epoch=lambda e: e + 2), grpc.StatusCode.ABORTED),
    "kind for another RPC": ("ExecuteStream", {}, grpc.StatusCode.INVALID_ARGUMENT),
    "relabelled kind": ("ExecuteStream", dict(kind=int(Kind.STREAM_REQUEST)), grpc.StatusCode.UNAUTHENTICATED),
    "short ciphertext": ("Execute", dict(ciphertext=lambda c: c[:15]), grpc.StatusCode.INVALID_ARGUMENT),
    "event index": ("Execute", dict(event_index=1), grpc.StatusCode.INVALID_ARGUMENT),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_tampered_request_is_refused(broker, name):
    """§8.5: a record changed in transit is refused with the status of §11, and the
    session survives (state changes only after the tag verifies)."""
    method, changes, status = TAMPERINGS[name]
    with EnclaveClient(broker.addr, broker.fingerprint) as client:
        pb = client.pb.broker_pb2
        plaintext = pb.ExecuteRequest(job=client.job("return 1")).SerializeToString()
        record = client.session.seal_request(Kind.EXECUTE_REQUEST, plaintext)
        with pytest.raises(grpc.RpcError) as e:
            reply = _send(client, method, _tampered(record, **changes))
            list(reply) if method == "ExecuteStream" else None
        assert e.value.code() == status, e.value.details()
        # the genuine record is still accepted, once
        reply = _send(client, "Execute", record)
        from enclave_client.protocol import Record

        result = pb.ExecuteResult.FromString(
            client.session.open_reply(record.seq, Kind.EXECUTE_RESULT, Record.from_proto(reply))
        )
        assert result.final.result_json == "1"
        with pytest.raises(grpc.RpcError) as e:
            _send(client, "Execute", record)
        assert e.value.code() == grpc.StatusCode.ABORTED  # replay
        assert client.execute("return 2").value == 2


class _Call:
    def __init__(self, items):
        self._items = items

    def __iter__(self):
        return iter(self._items)

    def cancel(self):
        pass


class _StubFilter:
    """Stands between the client and the real stub: rewrites the broker's replies."""

    def __init__(self, stub, stream=None, unary=None):
        self._stub, self._stream, self._unary = stub, stream, unary

    def __getattr__(self, name):
        return getattr(self._stub, name)

    def ExecuteStream(self, request, **kw):
        records = list(self._stub.ExecuteStream(request, **kw))
        return _Call(self._stream(records))

    def Execute(self, request, **kw):
        return self._unary(self._stub.Execute(request, **kw))


def test_truncated_stream_is_detected(broker):
    code = "console.log('a'); console.log('b'); return 1"
    with EnclaveClient(broker.addr, broker.fingerprint) as client:
        real = client.stub
        client.stub = _StubFilter(real, stream=lambda rs: rs[:-1])  # drop STREAM_FINAL
        seen = []
        with pytest.raises(TruncatedStreamError, match="truncated"):
            for event in client.execute_stream(code):
                seen.append(event.console.text)
        assert seen == ["a", "b"]

        client.stub = _StubFilter(real, stream=lambda rs: rs[:1] + rs[2:])  # drop one event
        with pytest.raises(RecordError, match="expected"):
            list(client.execute_stream(code))

        client.stub = _StubFilter(real, stream=lambda rs: [rs[1], rs[0]] + rs[2:])  # reorder
        with pytest.raises(RecordError):
            list(client.execute_stream(code))

        client.stub = _StubFilter(real, stream=lambda rs: rs + rs[-1:])  # extra after final
        with pytest.raises(RecordError, match="after STREAM_FINAL"):
            list(client.execute_stream(code))

        client.stub = _StubFilter(real, stream=lambda rs: [])  # nothing at all
        with pytest.raises(TruncatedStreamError):
            list(client.execute_stream(code))

        client.stub = real
        assert [e.WhichOneof("event") for e in client.execute_stream(code)] == [
            "console", "console", "final",
        ]


def test_tampered_or_swapped_reply_is_refused(broker):
    with EnclaveClient(broker.addr, broker.fingerprint) as client:
        real = client.stub

        def flip(reply):
            reply.ciphertext = _flip(reply.ciphertext, 3)
            return reply

        client.stub = _StubFilter(real, unary=flip)
        with pytest.raises(RecordError, match="authentication failed"):
            client.execute("return 1")

        # the reply to an earlier request, delivered as the answer to a new one
        old = []
        client.stub = _StubFilter(real, unary=lambda r: old.append(r) or r)
        client.execute("return 1")
        client.stub = _StubFilter(real, unary=lambda r: old[0])
        with pytest.raises(RecordError):
            client.execute("return 2")

        client.stub = real
        assert client.execute("return 3").value == 3


def test_concurrent_requests_on_one_session(broker):
    with EnclaveClient(broker.addr, broker.fingerprint) as client:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client.execute, f"return {i} * 2") for i in range(24)]
            streams = [
                pool.submit(lambda i=i: list(client.execute_stream(f"console.log({i}); return {i}")))
                for i in range(8)
            ]
            assert [f.result().value for f in futures] == [i * 2 for i in range(24)]
            for i, s in enumerate(streams):
                events = s.result()
                assert events[0].console.text == str(i)
                assert events[-1].final.result_json == str(i)


@pytest.mark.parametrize("suite", SUITES)
def test_rekey_then_close(broker, suite):
    client = EnclaveClient(broker.addr, broker.fingerprint, suite=suite)
    client.connect()
    session = client.session
    for epoch in (1, 2, 3):
        client.rekey()
        assert session.sender.epoch == epoch and session.receiver.current.epoch == epoch
        assert client.execute(f"return {epoch}").value == epoch
    assert [e.WhichOneof("event") for e in client.execute_stream("return 0")] == ["final"]
    client.close_session()
    # §10.3: the broker forgot the session. Sent raw: the client itself would answer
    # UNAUTHENTICATED with a new handshake (§10.5).
    pb = client.pb.broker_pb2
    plaintext = pb.ExecuteRequest(job=client.job("return 1")).SerializeToString()
    with pytest.raises(grpc.RpcError) as e:
        _send(client, "Execute", session.seal_request(Kind.EXECUTE_REQUEST, plaintext))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # ... and the client goes on with a new session
    assert client.execute("return 4").value == 4
    assert client.session is not session
    client.shutdown()


def test_automatic_rekey_by_record_count(broker):
    """§9.1: the sender moves to the next epoch on its own; the broker follows."""
    client = EnclaveClient(
        broker.addr, broker.fingerprint, session_options={"max_records": 2}
    )
    with client:
        for i in range(7):
            assert client.execute(f"return {i}").value == i
        assert client.session.sender.epoch == 3


def test_results_larger_than_grpc_default_limit(broker):
    with EnclaveClient(broker.addr, broker.fingerprint) as client:
        out = client.execute("return 'x'.repeat(5 * 1024 * 1024)", level="PERMISSIVE")
        assert len(out.value) == 5 * 1024 * 1024


# -- client authentication (§5.4) ---------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_client_authentication(auth_broker, client_key, suite):
    with EnclaveClient(
        auth_broker.addr, auth_broker.fingerprint, suite=suite, identity=client_key
    ) as client:
        assert client.session.client_auth_required
        assert client.execute("return 'authenticated'").value == "authenticated"
        assert [e.WhichOneof("event") for e in client.execute_stream("return 1")] == ["final"]


def test_client_authentication_required(auth_broker):
    with pytest.raises(ClientAuthRequiredError):
        EnclaveClient(auth_broker.addr, auth_broker.fingerprint).connect()


def test_unknown_client_key_is_refused(auth_broker, tmp_path):
    stranger = generate_identity(tmp_path / "stranger.key")
    with pytest.raises(RemoteError) as e:
        EnclaveClient(auth_broker.addr, auth_broker.fingerprint, identity=stranger).connect()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED


def _bare_session(server, suite="x25519"):
    """A handshake without client authentication, bypassing EnclaveClient's own check."""
    client = EnclaveClient(server.addr, server.fingerprint, suite=suite)
    pb = client.pb.broker_pb2
    hs = ClientHandshake(server.fingerprint, suite)
    reply = client.stub.Handshake(
        pb.HandshakeRequest(
            client_hello=pb.ClientHello(version=1, suite=int(hs.suite), client_share=hs.client_share)
        )
    )
    client.session = hs.finish(ServerHelloFields.from_proto(reply.server_hello))
    return client


def test_unauthenticated_session_is_refused(auth_broker):
    """Refused with UNAUTHENTICATED; the client's one new handshake then finds that the
    broker requires an identity it does not have."""
    client = _bare_session(auth_broker)
    with pytest.raises(ClientAuthRequiredError):
        client.execute("return 1")
    client.shutdown()


def test_a_forgotten_session_is_replaced_by_a_new_handshake(tmp_path):
    """§10.5: a broker may drop a session at any time (here: idle for a second); the
    client's next request gets UNAUTHENTICATED, handshakes again and runs, as the Rust
    client does. Unary calls and streams alike."""
    server = start_broker(tmp_path, "--session-idle-secs", "1")
    try:
        with EnclaveClient(server.addr, server.fingerprint) as client:
            assert client.execute("return 1").value == 1
            first = client.session
            time.sleep(1.5)
            assert client.execute("return 2").value == 2
            assert client.session is not first
            second = client.session
            time.sleep(1.5)
            events = list(client.execute_stream("return 3"))
            assert events[-1].final.result_json == "3"
            assert client.session is not second
    finally:
        server.stop()


def test_failed_client_auth_does_not_end_the_session(auth_broker, client_key, tmp_path):
    """§5.4: a bad attempt (here: a Finished MAC from the wrong key) leaves the session
    usable for the real client."""
    client = _bare_session(auth_broker)
    pb = client.pb.broker_pb2
    auth = client.session.authenticate(client_key)
    bad = pb.ClientAuth(
        session_id=auth.session_id,
        client_identity=auth.client_identity,
        signature=auth.signature,
        finished=_flip(auth.finished),
    )
    with pytest.raises(grpc.RpcError) as e:
        client.stub.Handshake(pb.HandshakeRequest(client_auth=bad))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    good = pb.ClientAuth(**{k: getattr(auth, k) for k in ("session_id", "client_identity", "signature", "finished")})
    assert client.stub.Handshake(pb.HandshakeRequest(client_auth=good)).HasField("client_auth_accepted")
    assert client.execute("return 5").value == 5
    client.shutdown()


def test_optional_client_authentication(broker, client_key):
    """Without an allow-list a client MAY authenticate, but only before its first request,
    and only once (FAILED_PRECONDITION otherwise)."""
    with EnclaveClient(broker.addr, broker.fingerprint, identity=client_key) as client:
        assert not client.session.client_auth_required
        assert client.execute("return 1").value == 1

    def send_auth(client, auth):
        pb = client.pb.broker_pb2
        fields = {k: getattr(auth, k) for k in ("session_id", "client_identity", "signature", "finished")}
        return client.stub.Handshake(pb.HandshakeRequest(client_auth=pb.ClientAuth(**fields)))

    # a valid ClientAuth, computed before the first request but sent after it
    client = _bare_session(broker)
    auth = client.session.authenticate(client_key)
    assert client.execute("return 1").value == 1
    with pytest.raises(grpc.RpcError) as e:
        send_auth(client, auth)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    client.shutdown()

    # twice
    client = _bare_session(broker)
    auth = client.session.authenticate(client_key)
    assert send_auth(client, auth).HasField("client_auth_accepted")
    with pytest.raises(grpc.RpcError) as e:
        send_auth(client, auth)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert client.execute("return 2").value == 2
    client.shutdown()


# -- handshake refusals (§5.2, §11) ------------------------------------------------------


def _invalid_shares():
    import json
    from pathlib import Path

    testdata = Path(__file__).resolve().parents[3] / "proto" / "testdata"
    for name, suite in (("vectors-x25519.json", 1), ("vectors-p256.json", 2)):
        for share in json.loads((testdata / name).read_text())["invalid_peer_shares"]:
            yield suite, bytes.fromhex(share)


def test_broker_refuses_bad_client_hellos(broker):
    client = EnclaveClient(broker.addr, broker.fingerprint)
    pb = client.pb.broker_pb2
    good = ClientHandshake(broker.fingerprint, "x25519").client_share
    hellos = [
        pb.ClientHello(version=2, suite=1, client_share=good),
        pb.ClientHello(version=0, suite=1, client_share=good),
        pb.ClientHello(version=1, suite=0, client_share=good),
        pb.ClientHello(version=1, suite=3, client_share=good),
        pb.ClientHello(version=1, suite=2, client_share=good),  # an X25519 share for P-256
    ] + [pb.ClientHello(version=1, suite=s, client_share=share) for s, share in _invalid_shares()]
    for hello in hellos:
        with pytest.raises(grpc.RpcError) as e:
            client.stub.Handshake(pb.HandshakeRequest(client_hello=hello))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (hello, e.value.details())
    client.shutdown()


def test_client_auth_for_an_unknown_session(broker, client_key):
    client = _bare_session(broker)
    auth = client.session.authenticate(client_key)
    pb = client.pb.broker_pb2
    with pytest.raises(grpc.RpcError) as e:
        client.stub.Handshake(
            pb.HandshakeRequest(
                client_auth=pb.ClientAuth(
                    session_id=bytes(16), client_identity=auth.client_identity,
                    signature=auth.signature, finished=auth.finished,
                )
            )
        )
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    client.shutdown()
