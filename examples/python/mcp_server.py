"""A small MCP server for the broker's `[mcp.NAME]` tests, built with the official `mcp`
package (its `MCPServer`, named `FastMCP` before mcp 2).

    python mcp_server.py --stdio [--linger S]   # MCP over stdin/stdout (the broker starts it)
    python mcp_server.py --http [--port PORT]   # streamable HTTP at http://127.0.0.1:PORT/mcp

With `--http` it binds and listens before it prints `listening on PORT` (one line on
stdout), so a client that connects after that line is served; `--port 0` (the default)
picks a free port. Its log goes to stderr.

A broker config that uses it (see examples/python/tests/test_mcp.py):

    [mcp.py]
    command = ["python3", "mcp_server.py", "--stdio"]

    [mcp.web]
    url = "http://127.0.0.1:PORT/mcp"
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("enclave-example", log_level="WARNING")

# What the tools below saw, for the tests: `echo`'s arguments, and how `hang` ended.
seen: list[dict] = []
counts = {"hang_started": 0, "hang_cancelled": 0}


@server.tool()
def echo(text: str, n: int = 1) -> dict:
    """Returns its arguments: {text, n}."""
    seen.append({"text": text, "n": n})
    return {"text": text, "n": n}


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers (structured output: {"result": a + b})."""
    return a + b


@server.tool(structured_output=False)
def shout(text: str) -> str:
    """Upper-cases text (a plain text result)."""
    return text.upper()


@server.tool(structured_output=False)
def big(n: int) -> str:
    """A text of `n` x's."""
    return "x" * n


@server.tool()
def fail(message: str) -> str:
    """Fails with `message` (a ToolError: the SDK hides other exceptions' messages)."""
    raise ToolError(message)


@server.tool()
async def hang() -> str:
    """Never answers (until the call is cancelled)."""
    counts["hang_started"] += 1
    try:
        await anyio.sleep_forever()
    finally:
        counts["hang_cancelled"] += 1
    return "unreachable"


@server.tool()
def stats() -> dict:
    """What the other tools saw: echo's arguments and how many hang calls started and ended."""
    return {"seen": seen, **counts, "pid": os.getpid()}


@server.tool()
def is_secret(text: str) -> bool:
    """Whether `text` is the value of the environment variable EXPECTED_SECRET."""
    expected = os.environ.get("EXPECTED_SECRET")
    return expected is not None and text == expected


@server.tool()
def environment(name: str) -> str | None:
    """The value of one of this process's environment variables, or null."""
    return os.environ.get(name)


@server.tool()
def crash() -> str:
    """Ends this server's process at once."""
    sys.stderr.flush()
    os._exit(3)


def serve_http(port: int) -> None:
    import uvicorn

    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose protocol says
    # TCP, and without it a reply waits for the peer's delayed ACK (about 40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    # Connections made from here on wait in the backlog until uvicorn accepts them.
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    app = server.streamable_http_app(host="127.0.0.1")
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    anyio.run(uv.serve, [sock])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--stdio", action="store_true", help="serve MCP on stdin/stdout")
    mode.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp")
    parser.add_argument("--port", type=int, default=0, help="with --http (default: a free port)")
    parser.add_argument(
        "--linger",
        type=float,
        default=0,
        help="with --stdio: stay alive this many seconds after stdin closes (a server that "
        "only a kill ends, for the test that the broker kills its servers)",
    )
    args = parser.parse_args(argv)
    if args.stdio:
        print(f"mcp_server.py: serving MCP on stdio (pid {os.getpid()})", file=sys.stderr, flush=True)
        server.run("stdio")
        time.sleep(args.linger)
    else:
        serve_http(args.port)


if __name__ == "__main__":
    main()
