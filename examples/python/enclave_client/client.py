"""A small gRPC client for the enclave broker (`enclave.v1.Broker`, protocol v1).

    from enclave_client import EnclaveClient

    with EnclaveClient("127.0.0.1:7700", pin="sha256:…") as client:
        out = client.execute("console.log('hi'); return 6 * 7")
        print(out.console, out.value)          # ['hi'] 42
        for event in client.execute_stream("console.log(1); return 2"):
            print(event)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterator, Optional

import grpc

from .errors import (
    ClientAuthRequiredError,
    HandshakeError,
    RecordError,
    RemoteError,
    TruncatedStreamError,
)
from .protocol import (
    PROTOCOL_VERSION,
    ClientHandshake,
    ClientSession,
    Kind,
    Record,
    ServerHelloFields,
    Suite,
)
from .stubs import load as load_stubs

# §8.1: a plaintext is at most 16 MiB, so a SealedRecord is at most that plus its tag and
# header. gRPC's default receive limit (4 MiB) is too small for the results the broker may
# send (up to 8 MiB of result at PERMISSIVE).
MAX_RECORD_BYTES = (1 << 24) + 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RECORD_BYTES),
    ("grpc.max_send_message_length", MAX_RECORD_BYTES),
]

LEVELS = {"UNSPECIFIED": 0, "STRICT": 1, "SECURE": 2, "STANDARD": 3, "PERMISSIVE": 4}


@dataclass
class ExecuteOutcome:
    """What `EnclaveClient.execute` returns: the decoded `ExecuteResult`."""

    #: the returned value as JSON, or None when the job failed
    result_json: Optional[str]
    #: a `JobError` (protobuf) when the script failed or the broker could not run it
    error: object
    #: True when the broker could not run the job to its end (`ExecuteResult.error`)
    broker_error: bool
    #: console lines as text, in order
    console: list = field(default_factory=list)
    #: `JobStats` (protobuf) or None
    stats: object = None
    #: the `ExecuteResult` protobuf itself
    raw: object = None

    @property
    def ok(self) -> bool:
        return self.result_json is not None

    @property
    def value(self):
        """The returned value, parsed. Raises `RuntimeError` when the job failed."""
        if self.result_json is None:
            e = self.error
            raise RuntimeError(f"job failed: {e.name or e.code}: {e.message}")
        return json.loads(self.result_json)


def _rpc_error(method: str, err: grpc.RpcError) -> RemoteError:
    return RemoteError(method, err.code(), err.details())


class EnclaveClient:
    """One end-to-end encrypted session with a broker.

    `pin` is the broker's fingerprint (`sha256:<hex>`); a broker with another key is
    refused (`PinMismatchError`). `suite` is "x25519" (default) or "p256". `identity`, an
    `Ed25519PrivateKey`, authenticates the client (required when the broker has an
    allow-list). `channel` may be any `grpc.Channel` (e.g. a TLS one); by default an
    insecure channel to `target` is opened.
    """

    def __init__(
        self,
        target: str,
        pin: str,
        *,
        suite="x25519",
        identity=None,
        channel: Optional[grpc.Channel] = None,
        timeout: Optional[float] = 60.0,
        session_options: Optional[dict] = None,
    ):
        self.pb = load_stubs()
        self.target = target
        self.pin = pin
        self.suite = Suite.parse(suite)
        self.identity = identity
        self.timeout = timeout
        self._own_channel = channel is None
        self.channel = channel or grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = self.pb.broker_pb2_grpc.BrokerStub(self.channel)
        self.session: Optional[ClientSession] = None
        self.session_options = session_options or {}

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> "EnclaveClient":
        if self.session is None:
            self.connect()
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.session is not None and exc[0] is None:
                self.close_session()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Closes the gRPC channel if this client opened it."""
        if self._own_channel:
            self.channel.close()

    def connect(self) -> ClientSession:
        """Runs the handshake (§5): ClientHello -> ServerHello, checks, then the optional
        client authentication."""
        pb = self.pb.broker_pb2
        hs = ClientHandshake(self.pin, self.suite)
        request = pb.HandshakeRequest(
            client_hello=pb.ClientHello(
                version=PROTOCOL_VERSION, suite=int(self.suite), client_share=hs.client_share
            )
        )
        try:
            response = self.stub.Handshake(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _rpc_error("Handshake", e) from None
        if response.WhichOneof("step") != "server_hello":
            raise HandshakeError("broker did not answer the ClientHello with a ServerHello")
        session = hs.finish(ServerHelloFields.from_proto(response.server_hello), **self.session_options)
        if session.client_auth_required and self.identity is None:
            raise ClientAuthRequiredError(
                "the broker requires client authentication: configure an Ed25519 identity key"
            )
        if self.identity is not None:
            auth = session.authenticate(self.identity)
            request = pb.HandshakeRequest(
                client_auth=pb.ClientAuth(
                    session_id=auth.session_id,
                    client_identity=auth.client_identity,
                    signature=auth.signature,
                    finished=auth.finished,
                )
            )
            try:
                response = self.stub.Handshake(request, timeout=self.timeout)
            except grpc.RpcError as e:
                raise _rpc_error("Handshake(client_auth)", e) from None
            if response.WhichOneof("step") != "client_auth_accepted":
                raise HandshakeError("broker did not accept the client authentication")
        self.session = session
        return session

    # -- records --------------------------------------------------------------------------

    def _require_session(self) -> ClientSession:
        if self.session is None:
            self.connect()
        return self.session

    def _to_proto(self, record: Record):
        return self.pb.broker_pb2.SealedRecord(
            session_id=record.session_id,
            epoch=record.epoch,
            seq=record.seq,
            kind=record.kind,
            event_index=record.event_index,
            ciphertext=record.ciphertext,
        )

    def _unary(self, method: str, kind: Kind, reply_kind: Kind, plaintext: bytes, rekey=False) -> bytes:
        # §10.5/§11: UNAUTHENTICATED means the broker no longer has the session (expired,
        # evicted, broker restarted) and ran nothing: one new handshake, one more try.
        for attempt in (0, 1):
            session = self._require_session()
            record = session.seal_rekey_request() if rekey else session.seal_request(kind, plaintext)
            try:
                reply = getattr(self.stub, method)(self._to_proto(record), timeout=self.timeout)
            except grpc.RpcError as e:
                if attempt == 0 and self._session_lost(e):
                    continue
                raise _rpc_error(method, e) from None
            return session.open_reply(record.seq, reply_kind, Record.from_proto(reply))
        raise AssertionError("unreachable")

    def _session_lost(self, err: grpc.RpcError) -> bool:
        """Forgets the session when the broker says it does not know it, so the next
        attempt starts with a new handshake."""
        if err.code() != grpc.StatusCode.UNAUTHENTICATED:
            return False
        self.session = None
        return True

    def job(self, code: str, *, level="STRICT", input_json: str = "", limits: Optional[dict] = None):
        """Builds a `Job` protobuf. `level` is a name ("STRICT", ...) or its number;
        `limits` a dict of `Limits` fields (e.g. {"timeout_ms": 1000})."""
        jp = self.pb.job_pb2
        if isinstance(level, str):
            level = LEVELS[level.upper().removeprefix("SECURITY_LEVEL_")]
        job = jp.Job(code=code, level=level, input_json=input_json)
        if limits:
            job.limits.CopyFrom(jp.Limits(**limits))
        return job

    def execute(self, code: str, **job_options) -> ExecuteOutcome:
        """Runs a job and returns its outcome (§10.1)."""
        pb = self.pb.broker_pb2
        plaintext = pb.ExecuteRequest(job=self.job(code, **job_options)).SerializeToString()
        reply = self._unary("Execute", Kind.EXECUTE_REQUEST, Kind.EXECUTE_RESULT, plaintext)
        result = pb.ExecuteResult.FromString(reply)
        console = [c.text for c in result.console]
        which = result.WhichOneof("outcome")
        if which == "final":
            final = result.final
            ok = final.WhichOneof("outcome") == "result_json"
            return ExecuteOutcome(
                result_json=final.result_json if ok else None,
                error=None if ok else final.error,
                broker_error=False,
                console=console,
                stats=final.stats,
                raw=result,
            )
        if which == "error":
            return ExecuteOutcome(None, result.error, True, console, None, result)
        raise RecordError("ExecuteResult has neither `final` nor `error`")

    def execute_stream(self, code: str, **job_options) -> Iterator[object]:
        """Runs a job and yields its `StreamEvent`s (protobuf) in order, the last one
        `final` or `error` (§10.2). Raises `TruncatedStreamError` when the stream ends
        without its final record."""
        pb = self.pb.broker_pb2
        plaintext = pb.ExecuteRequest(job=self.job(code, **job_options)).SerializeToString()
        retried = False
        session = self._require_session()
        record = session.seal_request(Kind.STREAM_REQUEST, plaintext)
        opener = session.stream_opener(record.seq)
        call = self.stub.ExecuteStream(self._to_proto(record), timeout=self.timeout)
        try:
            replies = iter(call)
            while True:
                try:
                    reply = next(replies)
                except StopIteration:
                    break
                except grpc.RpcError as e:
                    if opener.finished:
                        break  # a status after STREAM_FINAL changes nothing
                    if opener.next_index == 0 and not retried and self._session_lost(e):
                        # Nothing ran (no record was opened): as for unary calls, one
                        # new handshake and the request once more.
                        retried = True
                        call.cancel()
                        session = self._require_session()
                        record = session.seal_request(Kind.STREAM_REQUEST, plaintext)
                        opener = session.stream_opener(record.seq)
                        call = self.stub.ExecuteStream(self._to_proto(record), timeout=self.timeout)
                        replies = iter(call)
                        continue
                    if opener.next_index == 0:
                        raise _rpc_error("ExecuteStream", e) from None
                    raise TruncatedStreamError(
                        f"stream truncated after {opener.next_index} event(s): "
                        f"{e.code().name}: {e.details()}",
                        status=e.code(),
                    ) from None
                kind, data = opener.open(Record.from_proto(reply))
                event = pb.StreamEvent.FromString(data)
                which = event.WhichOneof("event")
                is_last = which in ("final", "error")
                if is_last != (kind is Kind.STREAM_FINAL):
                    raise RecordError(f"a {kind.name} record carries a `{which}` event")
                if is_last:
                    # §10.2 rule 3: nothing may follow the final record.
                    try:
                        extra = next(replies)
                    except StopIteration:
                        extra = None
                    except grpc.RpcError:
                        extra = None
                    if extra is not None:
                        raise RecordError("record after STREAM_FINAL")
                yield event
            opener.finish()
        finally:
            call.cancel()

    def rekey(self) -> None:
        """Moves both directions to their next key epoch (§9.1, §10.4)."""
        pb = self.pb.broker_pb2
        data = self._unary("Rekey", Kind.REKEY_REQUEST, Kind.REKEY_RESULT, b"", rekey=True)
        pb.RekeyResponse.FromString(data)

    def close_session(self) -> None:
        """Ends the session at the broker (§10.3)."""
        pb = self.pb.broker_pb2
        plaintext = pb.CloseSessionRequest().SerializeToString()
        data = self._unary("CloseSession", Kind.CLOSE_REQUEST, Kind.CLOSE_RESULT, plaintext)
        pb.CloseSessionResponse.FromString(data)
        self.session = None
