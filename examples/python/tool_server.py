"""An example `enclave.v1.ToolService` (proto/proto/enclave/v1/tools.proto): the tools
`py:add`, `py:divide` and `py:words`, for scripts to call with `await callTool(name, args)`.

    python3 tool_server.py --listen 127.0.0.1:7790

and in the broker's config (README.md, "Tool services: your own tools"):

    [tool_services.py]
    grpc = "http://127.0.0.1:7790"      # answers = ["py:*"] by default

The broker calls `List` for the tools (name, description, JSON Schema of the arguments)
and `Call` for each call a script makes. It checks the arguments against the schema first,
so a `Call` only ever sees arguments that match. Nothing here knows about sessions,
clients or encryption: the broker keeps those to itself.
"""

from __future__ import annotations

import argparse
import json
import logging
from concurrent import futures

import grpc

from enclave_client.stubs import load

pb = load()  # generates tools_pb2 / tools_pb2_grpc from the proto
log = logging.getLogger("tool_server")


class ToolError(Exception):
    """A failure the script should see: its message rejects the script's promise."""


def _schema(**properties) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def add(a: float, b: float) -> float:
    return a + b


def divide(a: float, b: float) -> float:
    if b == 0:
        raise ToolError("division by zero")
    return a / b


def words(text: str) -> int:
    return len(text.split())


NUMBER, STRING = {"type": "number"}, {"type": "string"}
# name -> (description, JSON Schema of the arguments, function called with them)
TOOLS = {
    "py:add": ("Adds two numbers: {a, b} -> a + b.", _schema(a=NUMBER, b=NUMBER), add),
    "py:divide": (
        "Divides a by b: {a, b} -> a / b; fails when b is 0.",
        _schema(a=NUMBER, b=NUMBER),
        divide,
    ),
    "py:words": ("Counts the words of a text: {text} -> a number.", _schema(text=STRING), words),
}


class ToolService(pb.tools_pb2_grpc.ToolServiceServicer):
    def __init__(self):
        self.calls = []  # (name, args) of every call, in order: what the tests look at

    def List(self, request, context):
        return pb.tools_pb2.ToolServiceListResponse(
            tools=[
                pb.broker_pb2.ToolInfo(
                    name=name, description=description, input_schema_json=json.dumps(schema)
                )
                for name, (description, schema, _) in TOOLS.items()
            ]
        )

    def Call(self, request, context):
        # request.job_id is the same for every call of one job (a key for per-job state);
        # request.deadline_unix_ms, also context.time_remaining(), is when the call times out.
        args = json.loads(request.args_json)
        self.calls.append((request.name, args))
        if request.name not in TOOLS:
            return pb.tools_pb2.ToolCallResponse(error=f"unknown tool {request.name}")
        function = TOOLS[request.name][2]
        try:
            # The broker checked args against the schema: they are exactly the parameters.
            result_json = json.dumps(function(**args), allow_nan=False)
        except ToolError as e:
            return pb.tools_pb2.ToolCallResponse(error=str(e))
        except Exception:
            # Details go to this service's log, not to the script.
            log.exception("%s failed", request.name)
            return pb.tools_pb2.ToolCallResponse(error="internal error")
        return pb.tools_pb2.ToolCallResponse(result_json=result_json)


def serve(address: str, service: ToolService | None = None) -> tuple[grpc.Server, int]:
    """Starts serving on `address` (`host:port`, port 0 for any free one); returns the
    running server and the port it bound."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb.tools_pb2_grpc.add_ToolServiceServicer_to_server(service or ToolService(), server)
    port = server.add_insecure_port(address)
    server.start()
    return server, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:7790", help="host:port (port 0: any)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    server, port = serve(args.listen)
    host = args.listen.rsplit(":", 1)[0]
    print(f"tool server serving addr={host}:{port} tools={','.join(TOOLS)}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
