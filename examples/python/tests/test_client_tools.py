"""Client-provided tools (PROTOCOL.md §10.6) against a real `enclave-broker`: tools this
client answers itself for one job, over the bidirectional `ExecuteWithTools`
(`execute_with_tools`) and over `ExecuteStream` + unary `SubmitToolResult`
(`execute_stream(client_tools=...)` + `submit_tool_result`).

The broker waits 1 s for an answer (`[jobs] client_tool_timeout_ms = 1000`). Handlers that
must wait block on `threading.Event`s the test sets when it has seen what it waits for, so
nothing depends on a fixed sleep; every such wait has a timeout, so a missing answer fails
the test instead of hanging it.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
from collections import Counter

import grpc
import pytest

from enclave_client import ClientTool, EnclaveClient, RemoteError, ToolInfo
from enclave_client.protocol import Kind, Record

from conftest import start_broker_with_config

CONFIG = "[jobs]\nclient_tool_timeout_ms = 1000\n"
TIMED_OUT = "the client did not answer within 1000 ms"
WAIT = 10.0  # the longest any test waits for something it expects
INVALID_JOB = 12  # ErrorCode.ERROR_CODE_INVALID_JOB


@pytest.fixture(scope="module")
def tools_broker(tmp_path_factory):
    server = start_broker_with_config(tmp_path_factory.mktemp("client-tools"), CONFIG)
    yield server
    server.stop()


@pytest.fixture
def client(tools_broker):
    with EnclaveClient(tools_broker.addr, tools_broker.fingerprint) as client:
        yield client


@pytest.fixture
def released():
    """Set at the end of each test: lets blocked handlers return (their answers then come
    after their job ended), so no handler thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def kinds(events) -> list[str]:
    return [e.WhichOneof("event") for e in events]


def value(events):
    """The job's returned value, from its final event."""
    assert events, "no events"
    last = events[-1]
    assert last.WhichOneof("event") == "final", f"{last}"
    assert last.final.WhichOneof("outcome") == "result_json", f"the script failed: {last.final.error}"
    return json.loads(last.final.result_json)


def calls_of(events, name=None) -> list:
    return [
        e.tool_call
        for e in events
        if e.WhichOneof("event") == "tool_call" and (name is None or e.tool_call.name == name)
    ]


def results_of(events) -> list:
    return [e.tool_result for e in events if e.WhichOneof("event") == "tool_result"]


def wait_for(event: threading.Event, what: str) -> None:
    assert event.wait(WAIT), f"timed out waiting for {what}"


def test_record_kinds_match_the_proto(client):
    pb = client.pb.broker_pb2
    assert Kind.TOOL_RESULT == pb.RECORD_KIND_TOOL_RESULT == 12
    assert Kind.TOOL_RESULT_ACK == pb.RECORD_KIND_TOOL_RESULT_ACK == 13


# ---- ExecuteWithTools ------------------------------------------------------------------


def test_concurrent_calls_are_answered_out_of_order(client):
    """Two calls in flight at once; `slow` answers only once the job has taken `fast`'s
    answer (its tool_result event was read), so the answers cross. Handlers run
    concurrently: answering in call order would leave `slow` waiting for ever."""
    fast_answered = threading.Event()
    seen = Counter()
    seen_lock = threading.Lock()

    def slow(args):
        with seen_lock:
            seen["slow"] += 1
        wait_for(fast_answered, "the fast call's result event")
        return {"slow": args["n"] * 10, "nested": [None, True, "é ✓"]}

    async def fast(args):  # an async handler runs to completion on its thread
        with seen_lock:
            seen["fast"] += 1
        return args["n"] + 1

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    tools = {
        "slow": ClientTool("Answers last.", schema, slow),
        "fast": ClientTool("Answers first.", schema, fast),
    }
    code = """
        console.log('before');
        const [a, b] = await Promise.all([callTool('slow', {n: 4}), callTool('fast', {n: 41})]);
        console.log('after');
        return {a, b, echo: await callTool('echo', {x: 1})};
    """
    events = []
    stream = client.execute_with_tools(code, tools)
    for event in stream:
        events.append(event)
        if event.WhichOneof("event") == "tool_result" and event.tool_result.name == "fast":
            fast_answered.set()
    assert value(events) == {
        "a": {"slow": 40, "nested": [None, True, "é ✓"]},
        "b": 42,
        "echo": {"x": 1},
    }
    assert seen == {"slow": 1, "fast": 1}
    slow_call, fast_call = calls_of(events, "slow")[0], calls_of(events, "fast")[0]
    assert slow_call.client_answers and fast_call.client_answers
    assert json.loads(slow_call.args_json) == {"n": 4}
    assert slow_call.call_id < fast_call.call_id, "called in script order"
    # Answered out of order: fast's result first, then slow's, then echo's.
    results = results_of(events)
    assert [(r.call_id, r.name, r.is_error) for r in results] == [
        (fast_call.call_id, "fast", False),
        (slow_call.call_id, "slow", False),
        (calls_of(events, "echo")[0].call_id, "echo", False),
    ]
    # The broker's own tool is not the client's to answer.
    assert not calls_of(events, "echo")[0].client_answers
    assert [e.console.text for e in events if e.WhichOneof("event") == "console"] == ["before", "after"]
    assert stream.stream_seq is not None and stream.session is client.session


def test_list_tools_in_the_script_shows_the_clients_tools_next_to_echo(client):
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}

    def search(args):
        """Searches the client's notes."""
        return []

    tools = {
        "notes:search": search,  # a plain function: its docstring describes it, any arguments
        "crm:lookup": ClientTool("Finds a customer.", schema, lambda args: None),
    }
    events = list(client.execute_with_tools("return await listTools()", tools))
    listed = {t["name"]: t for t in value(events)}
    assert sorted(listed) == ["crm:lookup", "echo", "notes:search"]
    assert listed["crm:lookup"]["description"] == "Finds a customer."
    assert listed["crm:lookup"]["inputSchema"] == schema
    assert listed["notes:search"]["description"] == "Searches the client's notes."
    assert listed["notes:search"]["inputSchema"] == {}
    assert "Returns its arguments" in listed["echo"]["description"]
    # The sealed ListTools call has no job: the broker's tools only (§10.6).
    assert [t.name for t in client.list_tools()] == ["echo"]


def test_a_schema_violation_never_reaches_the_handler(client):
    calls = []
    schema = {
        "type": "object",
        "properties": {"customer": {"type": "string"}},
        "required": ["customer"],
        "additionalProperties": False,
    }
    tools = {"orders:count": ClientTool("Counts orders.", schema, lambda args: calls.append(args) or 3)}
    code = """
        const errors = [];
        for (const args of [{customer: 7}, {}, {customer: 'ada', extra: 1}]) {
            try { await callTool('orders:count', args); } catch (e) { errors.push(e.message); }
        }
        return {errors, ok: await callTool('orders:count', {customer: 'ada'})};
    """
    events = list(client.execute_with_tools(code, tools))
    out = value(events)
    assert out["ok"] == 3
    assert calls == [{"customer": "ada"}], "only the valid call reached the handler"
    refused = "tool orders:count failed: arguments do not match the tool's schema"
    wrong_type, missing, extra = out["errors"]
    assert wrong_type == refused + ' at /customer: 7 is not of type "string"'
    assert missing == refused + ': "customer" is a required property'  # at the root
    assert extra == refused + ": Additional properties are not allowed ('extra' was unexpected)"
    # Every call shows as an event, but only the valid one is the client's to answer;
    # the refused ones' results follow as errors.
    shown = calls_of(events, "orders:count")
    assert [c.client_answers for c in shown] == [False, False, False, True]
    assert [r.is_error for r in results_of(events)] == [True, True, True, False]


def test_a_handler_exception_rejects_in_the_script(client):
    class LedgerClosed(Exception):
        pass

    def fail(args):
        raise LedgerClosed(f"the ledger is closed for {args['day']}")

    def not_json(args):
        return {1, 2}  # a set: not JSON

    tools = {
        "ledger:post": ClientTool("Posts an entry.", {}, fail),
        "bad:value": ClientTool("Answers something that is not JSON.", None, not_json),
    }
    code = """
        const out = {};
        try { await callTool('ledger:post', {day: 'Sunday'}); }
        catch (e) { out.post = [e instanceof Error, e.message]; }
        try { await callTool('bad:value', {}); } catch (e) { out.bad = e.message; }
        out.after = 'the job goes on';
        return out;
    """
    events = list(client.execute_with_tools(code, tools))
    out = value(events)
    assert out["post"] == [True, "tool ledger:post failed: the ledger is closed for Sunday"]
    assert out["bad"].startswith("tool bad:value failed: Object of type set is not JSON serializable")
    assert out["after"] == "the job goes on"
    assert [(r.name, r.is_error) for r in results_of(events)] == [("ledger:post", True), ("bad:value", True)]


def test_an_unanswered_call_times_out_and_the_job_goes_on(client, released, caplog):
    caplog.set_level(logging.INFO, logger="enclave_client")
    entered, returned = threading.Event(), threading.Event()

    def hang(args):
        entered.set()
        released.wait(WAIT * 3)
        returned.set()
        return "too late"

    tools = {"hang": ClientTool("Never answers in time.", {}, hang)}
    code = """
        const started = Date.now();
        let message;
        try { await callTool('hang', {}); } catch (e) { message = e.message; }
        const waited = Date.now() - started;
        console.log('still running');
        return {message, waited, echo: await callTool('echo', 'on')};
    """
    events = list(client.execute_with_tools(code, tools))
    out = value(events)
    assert out["message"] == f"tool hang failed: {TIMED_OUT}"
    assert 900 <= out["waited"] < 5000, out
    assert out["echo"] == "on"
    assert "console" in kinds(events)
    assert entered.is_set() and not returned.is_set()
    [hung] = [r for r in results_of(events) if r.name == "hang"]
    assert hung.is_error
    # The handler answers after the job ended: the answer is dropped, nothing breaks.
    released.set()
    wait_for(returned, "the handler to return")
    deadline = time.monotonic() + WAIT
    while not any("dropped" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, f"no 'dropped' log: {caplog.records}"
        time.sleep(0.01)
    [dropped] = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert f"tool call {hung.call_id} (hang)" in dropped.getMessage()
    assert client.execute("return 'the session still works'").value == "the session still works"


def test_a_declaration_with_a_brokers_tool_name_refuses_the_job(client):
    calls = []
    tools = {"echo": ClientTool("Mine.", {}, lambda args: calls.append(args) or 0)}
    events = list(client.execute_with_tools("return await callTool('echo', 1)", tools))
    assert kinds(events) == ["error"]
    assert events[0].error.code == INVALID_JOB
    assert "client tool `echo` has the name of one of the broker's tools" in events[0].error.message
    assert calls == []


def test_another_clients_script_cannot_call_this_clients_tools(tools_broker, client, released):
    entered = threading.Event()
    calls = []

    def gate(args):
        calls.append(args)
        entered.set()
        released.wait(WAIT)
        return "owner's answer"

    tools = {"gate": ClientTool("Holds the owner's job.", {}, gate)}
    steal = "try { return await callTool('gate', {}); } catch (e) { return e.message; }"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        owning = pool.submit(lambda: list(client.execute_with_tools("return await callTool('gate', {})", tools)))
        wait_for(entered, "the owner's call to reach its handler")
        # While the owner's job waits in its own tool: another client's script ...
        with EnclaveClient(tools_broker.addr, tools_broker.fingerprint) as other:
            stolen = other.execute(steal).value
            # ... and a job streamed with tools of its own do not reach it,
            other_events = list(other.execute_with_tools(steal, {"mine": ClientTool("", {}, lambda a: 0)}))
        # ... nor does another job of the same client.
        same_session = client.execute(steal).value
        released.set()
        events = owning.result(WAIT)
    for message in (stolen, value(other_events), same_session):
        assert message.startswith("tool gate failed: unknown tool `gate`"), message
    assert value(events) == "owner's answer"
    assert calls == [{}], "only the owner's own call reached the handler"


def test_closing_the_stream_mid_call_cancels_the_job(tmp_path, released):
    """One job per session: the next job runs only once the broker has ended the first,
    which it does when the call is cancelled (long before its 30 s time limit)."""
    server = start_broker_with_config(tmp_path, CONFIG, "--max-jobs-per-session", "1")
    try:
        with EnclaveClient(server.addr, server.fingerprint) as client:
            tools = {"hang": ClientTool("Never answers in time.", {}, lambda args: released.wait(WAIT))}
            stream = client.execute_with_tools(
                "try { await callTool('hang', {}); } catch (e) {} while (true) {}", tools, level="STANDARD"
            )
            for event in stream:
                if event.WhichOneof("event") == "tool_call" and event.tool_call.name == "hang":
                    break
            with pytest.raises(RemoteError) as refused:  # the job holds the session's slot
                client.execute("return 'too soon'")
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            stream.close()
            started = time.monotonic()
            while True:
                try:
                    out = client.execute("return 'next'")
                    break
                except RemoteError as e:
                    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                    assert time.monotonic() - started < WAIT, "the cancelled job still holds the slot"
                    time.sleep(0.02)
            assert out.value == "next"
    finally:
        server.stop()


def test_a_lost_session_is_replaced_before_the_job_starts(client):
    """As for ExecuteStream: UNAUTHENTICATED before any record was opened means nothing
    ran: one new handshake, the request once more, and the answers on the new session."""
    first = client.session
    pb = client.pb.broker_pb2
    record = first.seal_request(Kind.CLOSE_REQUEST, pb.CloseSessionRequest().SerializeToString())
    client.stub.CloseSession(client._to_proto(record), timeout=10)
    stream = client.execute_with_tools(
        "return await callTool('twice', 21)", {"twice": ClientTool("Doubles.", None, lambda n: 2 * n)}
    )
    assert value(list(stream)) == 42
    assert client.session is not first and stream.session is client.session


def test_an_answer_for_another_stream_ends_the_call(client):
    """§10.6: every record after the first on an ExecuteWithTools call is an answer for
    that very stream, else INVALID_ARGUMENT (driven by hand: the client never does this)."""
    pb, jp = client.pb.broker_pb2, client.pb.job_pb2
    session = client._require_session()
    request = pb.ExecuteRequest(
        job=client.job("return await callTool('t', {})"),
        client_tools=[pb.ToolInfo(name="t", description="", input_schema_json="{}")],
    )
    first = session.seal_request(Kind.STREAM_REQUEST, request.SerializeToString())
    got_call = threading.Event()

    def records():
        yield client._to_proto(first)
        wait_for(got_call, "the tool_call event")
        wrong = pb.SubmitToolResult(
            stream_seq=first.seq + 1000, result=jp.ToolResult(call_id=1, result_json="1")
        )
        yield client._to_proto(session.seal_request(Kind.TOOL_RESULT, wrong.SerializeToString()))

    call = client.stub.ExecuteWithTools(records(), timeout=WAIT)
    opener = session.stream_opener(first.seq)
    seen = []
    with pytest.raises(grpc.RpcError) as ended:
        for reply in call:
            kind, data = opener.open(Record.from_proto(reply))
            event = pb.StreamEvent.FromString(data)
            seen.append(event.WhichOneof("event"))
            if seen[-1] == "tool_call":
                got_call.set()
    assert seen == ["tool_call"]
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(first.seq) in ended.value.details()


# ---- ExecuteStream + SubmitToolResult (the unary path, as over HTTP) -------------------


def test_the_unary_path_answers_calls_of_a_streamed_job(client):
    schema = {"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"]}
    declared = [ToolInfo("kv:get", "Reads a key.", schema), ToolInfo("kv:fail", "Fails.", {})]
    code = """
        let late;
        try { await callTool('kv:get', {k: 0}); } catch (e) { late = e.message; }
        const [one, two] = await Promise.all([callTool('kv:get', {k: 1}), callTool('kv:get', {k: 2})]);
        let failed;
        try { await callTool('kv:fail', {}); } catch (e) { failed = e.message; }
        return {late, one, two, failed};
    """
    stream = client.execute_stream(code, client_tools=declared)
    events, pending = [], {}
    for event in stream:
        events.append(event)
        which = event.WhichOneof("event")
        if which == "tool_call" and event.tool_call.client_answers:
            call = event.tool_call
            args = json.loads(call.args_json)
            if call.name == "kv:fail":
                stream.submit_tool_result(call.call_id, error="no such key")
            elif args["k"] == 0:
                pending[call.call_id] = args  # answered only after it timed out
            elif args["k"] == 1:
                pending[call.call_id] = args  # answered after k=2, out of order
            else:
                stream.submit_tool_result(call.call_id, {"v": "two"})
                [(first_id, _)] = [(i, a) for i, a in pending.items() if a["k"] == 1]
                client.submit_tool_result(stream.stream_seq, first_id, result_json='{"v": "one"}')
                # A second answer to the same call is acknowledged and dropped.
                client.submit_tool_result(stream.stream_seq, first_id, {"v": "again"})
        elif which == "tool_result" and event.tool_result.is_error and event.tool_result.name == "kv:get":
            # The k=0 call timed out: its answer now is acknowledged and dropped, and
            # so is an answer to a call that never existed; the job goes on.
            [(late_id, _)] = [(i, a) for i, a in pending.items() if a["k"] == 0]
            stream.submit_tool_result(late_id, "too late")
            stream.submit_tool_result(999, "nobody asked")
    assert value(events) == {
        "late": f"tool kv:get failed: {TIMED_OUT}",
        "one": {"v": "one"},
        "two": {"v": "two"},
        "failed": "tool kv:fail failed: no such key",
    }
    assert [c.client_answers for c in calls_of(events)] == [True] * 4
    # Once the job has ended, nothing waits for answers at its stream_seq.
    with pytest.raises(RemoteError) as gone:
        client.submit_tool_result(stream.stream_seq, 1, "after the end")
    assert gone.value.code == grpc.StatusCode.NOT_FOUND
    assert f"stream_seq {stream.stream_seq}" in gone.value.details


def test_submit_tool_result_for_a_stream_without_client_tools_is_not_found(client):
    stream = client.execute_stream("console.log('x'); return await callTool('echo', 1)")
    first = next(stream)
    assert first.WhichOneof("event") == "console"
    with pytest.raises(RemoteError) as refused:
        stream.submit_tool_result(1, "unasked")
    assert refused.value.code == grpc.StatusCode.NOT_FOUND
    assert value([first, *stream]) == 1


@pytest.mark.parametrize(
    "declared, message",
    [
        (
            [ToolInfo("twin", "", {}), ToolInfo("twin", "", {})],
            "client tool `twin` is declared twice",
        ),
        ([ToolInfo("odd", "", {"type": 7})], "client tool `odd`: its schema is not a usable JSON Schema"),
        ([ToolInfo("", "", {})], "a client tool's name must be 1 to 256 bytes"),
        ([ToolInfo("n" * 257, "", {})], "a client tool's name must be 1 to 256 bytes"),
        ([ToolInfo("tools:list", "", {})], "client tool `tools:list` has the name of one of the broker's tools"),
    ],
)
def test_declarations_the_broker_refuses(client, declared, message):
    events = list(client.execute_stream("return 1", client_tools=declared))
    assert kinds(events) == ["error"]
    assert events[0].error.code == INVALID_JOB
    assert message in events[0].error.message, events[0].error.message


def test_client_tools_on_a_unary_execute_refuse_the_job(client):
    pb = client.pb.broker_pb2
    request = pb.ExecuteRequest(
        job=client.job("return 1"),
        client_tools=[pb.ToolInfo(name="mine", description="", input_schema_json="{}")],
    )
    reply = client._unary("Execute", Kind.EXECUTE_REQUEST, Kind.EXECUTE_RESULT, request.SerializeToString())
    result = pb.ExecuteResult.FromString(reply)
    assert result.WhichOneof("outcome") == "error"
    assert result.error.code == INVALID_JOB
    assert "client tools need a streamed job" in result.error.message
