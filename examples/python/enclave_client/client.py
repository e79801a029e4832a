"""A small gRPC client for the enclave broker (`enclave.v1.Broker`, protocol v1).

    from enclave_client import ClientTool, EnclaveClient

    with EnclaveClient("127.0.0.1:7700", pin="sha256:…") as client:
        out = client.execute("console.log('hi'); return 6 * 7")
        print(out.console, out.value)          # ['hi'] 42
        for event in client.execute_stream("console.log(1); return 2"):
            print(event)
        for tool in client.list_tools():
            print(tool.name, tool.description, tool.input_schema)
        # tools this client answers itself, for one job (§10.6)
        tools = {"add": ClientTool("Adds a and b.", {"type": "object"}, lambda a: a["a"] + a["b"])}
        for event in client.execute_with_tools("return await callTool('add', {a: 2, b: 3})", tools):
            print(event)
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Union

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


@dataclass(frozen=True)
class ToolInfo:
    """One tool a script of this session may call (`ListTools`, §10.5)."""

    #: what the script calls, e.g. "echo" or "py:add"
    name: str
    #: what the tool does, for a person or a model choosing it
    description: str
    #: the JSON Schema of its arguments, parsed (`{}` accepts anything); the broker checks
    #: every call against it before it runs the tool
    input_schema: dict


@dataclass(frozen=True)
class ClientTool:
    """A tool this client answers itself for one job (`execute_with_tools`, §10.6).

    `handler(args)` gets the script's arguments, parsed from JSON (None when it passed
    none), after the broker has checked them against `input_schema`; what it returns,
    encoded as JSON, resolves the script's promise. An exception rejects it instead: the
    script's `Error` reads `tool NAME failed: <str(exception)>`. It runs on a thread of
    its own (calls are answered concurrently, in any order); it may also be an `async
    def`, run to completion on that thread with `asyncio.run`.
    """

    #: what the tool does, for a person or a model choosing it (the script's `listTools()`)
    description: str
    #: the JSON Schema of the arguments: a dict, a JSON text sent as is, or None (anything)
    input_schema: Union[dict, str, None]
    #: answers one call: `handler(args) -> value`
    handler: Callable[[Any], Any]


log = logging.getLogger("enclave_client")

#: §10.6: the longest `result_json` a client's answer may carry (16 MiB less 64 KiB).
MAX_TOOL_RESULT_BYTES = (16 << 20) - (64 << 10)


def _rpc_error(method: str, err: grpc.RpcError) -> RemoteError:
    return RemoteError(method, err.code(), err.details())


def _schema_json(schema) -> str:
    if schema is None:
        return ""  # §10.6: empty means any arguments
    if isinstance(schema, str):
        return schema
    return json.dumps(schema)


def _declarations(pb, tools) -> list:
    """`ToolInfo` protobufs for `ExecuteRequest.client_tools`, from a mapping of names to
    `ClientTool`s, `ToolInfo`s or plain functions, or from an iterable of `ToolInfo`s (in
    order, duplicates kept: the broker refuses them)."""
    if tools is None:
        return []
    if isinstance(tools, Mapping):
        items = tools.items()
    else:
        items = []
        for tool in tools:
            if not isinstance(tool, ToolInfo):
                raise TypeError(f"expected a ToolInfo, got {type(tool).__name__}")
            items.append((tool.name, tool))
    declared = []
    for name, tool in items:
        if isinstance(tool, (ClientTool, ToolInfo)):
            description, schema = tool.description, tool.input_schema
        elif callable(tool):
            description, schema = inspect.getdoc(tool) or "", None
        else:
            raise TypeError(f"client tool {name!r}: expected a ClientTool, got {type(tool).__name__}")
        declared.append(
            pb.ToolInfo(name=name, description=description, input_schema_json=_schema_json(schema))
        )
    return declared


def _handlers(tools) -> dict:
    """name -> handler, for `execute_with_tools`."""
    if not isinstance(tools, Mapping):
        raise TypeError("tools must map names to ClientTool objects (or functions)")
    handlers = {}
    for name, tool in tools.items():
        if isinstance(tool, ClientTool):
            handlers[name] = tool.handler
        elif callable(tool) and not isinstance(tool, ToolInfo):
            handlers[name] = tool
        else:
            raise TypeError(
                f"client tool {name!r}: expected a ClientTool or a function, got {type(tool).__name__}"
            )
    return handlers


async def _awaited(awaitable):
    return await awaitable


def _error_message(err: BaseException) -> str:
    return str(err) or type(err).__name__


class _Answerer:
    """Answers one job's calls of the client's tools (§10.6), on its `ExecuteWithTools`
    call: each call on a thread of its own, each answer a sealed TOOL_RESULT record put
    on the queue the call's request iterator reads. Closing it closes the client's
    sending side; answers that come later are dropped."""

    def __init__(self, client: "EnclaveClient", session: ClientSession, stream_seq: int, handlers: dict):
        self._client = client
        self._session = session
        self._stream_seq = stream_seq
        self._handlers = handlers
        self._outgoing: "queue.Queue" = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False

    def requests(self, first) -> Iterator[object]:
        """The call's records in: the STREAM_REQUEST, then the answers until `close`."""
        yield first
        while True:
            record = self._outgoing.get()
            if record is None:
                return
            yield record

    def start(self, call) -> None:
        threading.Thread(
            target=self._answer,
            args=(call.call_id, call.name, call.args_json),
            name=f"enclave-tool-{call.call_id}",
            daemon=True,  # a handler that never returns does not keep the process alive
        ).start()

    def _answer(self, call_id: int, name: str, args_json: str) -> None:
        pb = self._client.pb
        result = pb.job_pb2.ToolResult(call_id=call_id)
        try:
            handler = self._handlers.get(name)
            if handler is None:  # the broker only marks declared tools: not expected
                raise LookupError(f"this client has no tool {name!r}")
            args = json.loads(args_json) if args_json else None
            value = handler(args)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
            text = json.dumps(value, allow_nan=False)
            if len(text.encode()) > MAX_TOOL_RESULT_BYTES:
                raise ValueError(
                    f"the result is {len(text.encode())} bytes of JSON, more than the "
                    f"{MAX_TOOL_RESULT_BYTES} an answer carries"
                )
            result.result_json = text
        except Exception as e:  # the script gets the message, as for any tool
            result.error = _error_message(e)
        plaintext = pb.broker_pb2.SubmitToolResult(
            stream_seq=self._stream_seq, result=result
        ).SerializeToString()
        with self._lock:
            if self._closed:
                # The job ended (or the caller stopped reading): nobody waits for it.
                log.info("answer to tool call %d (%s) dropped: the job's stream has ended", call_id, name)
                return
            try:
                record = self._session.seal_request(Kind.TOOL_RESULT, plaintext)
            except Exception as e:
                log.warning("answer to tool call %d (%s) not sent: %s", call_id, name, e)
                return
            self._outgoing.put(self._client._to_proto(record))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._outgoing.put(None)


class EventStream:
    """The `StreamEvent`s (protobuf) of one streamed job, in order, the last one `final`
    or `error` (§10.2): an iterator, as returned by `execute_stream` and
    `execute_with_tools`. The request goes out when the first event is read. `close()`
    (or leaving a `with` block) cancels the call, which cancels the job."""

    def __init__(self, client: "EnclaveClient", plaintext: bytes, handlers: Optional[dict]):
        self._client = client
        #: the `seq` of the STREAM_REQUEST record (what `SubmitToolResult.stream_seq`
        #: names), once the request was sent
        self.stream_seq: Optional[int] = None
        #: the session the job runs on, once the request was sent
        self.session: Optional[ClientSession] = None
        self._events = client._run_stream(self, plaintext, handlers)

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self):
        return next(self._events)

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit_tool_result(self, call_id: int, result=None, *, error: Optional[str] = None,
                           result_json: Optional[str] = None) -> None:
        """Answers a `tool_call` of this stream's job with the unary `SubmitToolResult`
        (`EnclaveClient.submit_tool_result`), on the job's own session."""
        if self.stream_seq is None:
            raise RuntimeError("the stream has not started: read an event first")
        self._client.submit_tool_result(
            self.stream_seq, call_id, result, error=error, result_json=result_json, session=self.session
        )


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

    def _stream_request(self, code: str, client_tools, job_options: dict) -> bytes:
        pb = self.pb.broker_pb2
        request = pb.ExecuteRequest(
            job=self.job(code, **job_options),
            client_tools=_declarations(pb, client_tools),
        )
        return request.SerializeToString()

    def execute_stream(self, code: str, *, client_tools=None, **job_options) -> EventStream:
        """Runs a job and yields its `StreamEvent`s (protobuf) in order, the last one
        `final` or `error` (§10.2). Raises `TruncatedStreamError` when the stream ends
        without its final record.

        `client_tools` (§10.6) declares tools this client answers itself with
        `submit_tool_result` (the unary path, as over HTTP): a list of `ToolInfo`, or a
        mapping of names to `ClientTool`s (their handlers are not called here). Their
        calls arrive as `tool_call` events with `client_answers` set; `execute_with_tools`
        answers them for you."""
        plaintext = self._stream_request(code, client_tools, job_options)
        return EventStream(self, plaintext, None)

    def execute_with_tools(self, code: str, tools: Mapping[str, ClientTool], **job_options) -> EventStream:
        """Runs a job whose script may call `tools`, answered by this client (§10.6), and
        yields its `StreamEvent`s as `execute_stream` does.

        `tools` maps each name to a `ClientTool(description, input_schema, handler)` (or a
        plain function: its docstring describes it, any arguments). The job runs on one
        bidirectional `ExecuteWithTools` call: every `tool_call` event with
        `client_answers` set starts `handler(args)` on its own thread, and its answer goes
        back sealed on the same call while the events keep coming. Handlers only start
        as the events are read: iterate the stream to the end. An answer that comes after
        the job ended is dropped."""
        handlers = _handlers(tools)
        plaintext = self._stream_request(code, tools, job_options)
        return EventStream(self, plaintext, handlers)

    def _run_stream(self, stream: EventStream, plaintext: bytes, handlers: Optional[dict]):
        """The events of `stream`: over ExecuteStream, or with `handlers` over
        ExecuteWithTools answering the client's tools."""
        pb = self.pb.broker_pb2
        method = "ExecuteStream" if handlers is None else "ExecuteWithTools"

        def start():
            session = self._require_session()
            record = session.seal_request(Kind.STREAM_REQUEST, plaintext)
            stream.session, stream.stream_seq = session, record.seq
            if handlers is None:
                answerer = None
                call = self.stub.ExecuteStream(self._to_proto(record), timeout=self.timeout)
            else:
                # The request first, the answers after it on the same call (§10.6).
                answerer = _Answerer(self, session, record.seq, handlers)
                call = self.stub.ExecuteWithTools(
                    answerer.requests(self._to_proto(record)), timeout=self.timeout
                )
            return session.stream_opener(record.seq), call, answerer

        retried = False
        opener, call, answerer = start()
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
                        if answerer is not None:
                            answerer.close()
                        opener, call, answerer = start()
                        replies = iter(call)
                        continue
                    if opener.next_index == 0:
                        raise _rpc_error(method, e) from None
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
                    if answerer is not None:
                        answerer.close()  # the job is over: no more answers
                    # §10.2 rule 3: nothing may follow the final record.
                    try:
                        extra = next(replies)
                    except StopIteration:
                        extra = None
                    except grpc.RpcError:
                        extra = None
                    if extra is not None:
                        raise RecordError("record after STREAM_FINAL")
                elif which == "tool_call" and answerer is not None and event.tool_call.client_answers:
                    # Only calls the broker marks as ours (a declared tool whose
                    # arguments passed its schema); the event is shown either way.
                    answerer.start(event.tool_call)
                yield event
            opener.finish()
        finally:
            if answerer is not None:
                answerer.close()
            call.cancel()

    def submit_tool_result(
        self,
        stream_seq: int,
        call_id: int,
        result=None,
        *,
        error: Optional[str] = None,
        result_json: Optional[str] = None,
        session: Optional[ClientSession] = None,
    ) -> None:
        """Answers one `tool_call` of a job started with `execute_stream(...,
        client_tools=...)`: the unary `SubmitToolResult` (§10.6; `POST /v1/tool-result`
        over HTTP). `stream_seq` is the job's `EventStream.stream_seq`. The script's promise
        resolves with `result` (encoded as JSON; or `result_json`, a JSON text as is), or
        rejects with `error` when that is given.

        Raises `RemoteError` with NOT_FOUND when no job of the session waits for answers
        at `stream_seq` (it ended, or declared no client tools), RESOURCE_EXHAUSTED when it
        has 64 answers it has not taken yet. Not retried on a new session: the job is
        bound to its own (`session`, by default the current one)."""
        pb = self.pb.broker_pb2
        outcome = self.pb.job_pb2.ToolResult(call_id=call_id)
        if error is not None:
            if result is not None or result_json is not None:
                raise ValueError("give a result or an error, not both")
            outcome.error = error
        elif result_json is not None:
            if result is not None:
                raise ValueError("give result or result_json, not both")
            outcome.result_json = result_json
        else:
            outcome.result_json = json.dumps(result, allow_nan=False)
        plaintext = pb.SubmitToolResult(stream_seq=stream_seq, result=outcome).SerializeToString()
        session = session or self._require_session()
        record = session.seal_request(Kind.TOOL_RESULT, plaintext)
        try:
            reply = self.stub.SubmitToolResult(self._to_proto(record), timeout=self.timeout)
        except grpc.RpcError as e:
            raise _rpc_error("SubmitToolResult", e) from None
        data = session.open_reply(record.seq, Kind.TOOL_RESULT_ACK, Record.from_proto(reply))
        pb.SubmitToolResultResponse.FromString(data)

    def rekey(self) -> None:
        """Moves both directions to their next key epoch (§9.1, §10.4)."""
        pb = self.pb.broker_pb2
        data = self._unary("Rekey", Kind.REKEY_REQUEST, Kind.REKEY_RESULT, b"", rekey=True)
        pb.RekeyResponse.FromString(data)

    def list_tools(self) -> list[ToolInfo]:
        """The tools this session's scripts may call, sorted by name, each with its
        description and argument schema (§10.5)."""
        pb = self.pb.broker_pb2
        plaintext = pb.ListToolsRequest().SerializeToString()
        data = self._unary("ListTools", Kind.LIST_TOOLS_REQUEST, Kind.LIST_TOOLS_RESULT, plaintext)
        tools = []
        for tool in pb.ListToolsResponse.FromString(data).tools:
            try:
                schema = json.loads(tool.input_schema_json or "{}")
            except ValueError:
                raise RecordError(f"the schema of tool {tool.name!r} is not JSON") from None
            tools.append(ToolInfo(tool.name, tool.description, schema))
        return tools

    def close_session(self) -> None:
        """Ends the session at the broker (§10.3)."""
        pb = self.pb.broker_pb2
        plaintext = pb.CloseSessionRequest().SerializeToString()
        data = self._unary("CloseSession", Kind.CLOSE_REQUEST, Kind.CLOSE_RESULT, plaintext)
        pb.CloseSessionResponse.FromString(data)
        self.session = None
