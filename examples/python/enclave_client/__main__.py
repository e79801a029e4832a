"""python -m enclave_client --broker HOST:PORT --pin sha256:... [--stream] CODE | --tools"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from google.protobuf import json_format

from . import EnclaveClient, EnclaveError, load_identity


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m enclave_client", description=__doc__)
    ap.add_argument("--broker", required=True, help="HOST:PORT of enclave-broker")
    ap.add_argument("--pin", required=True, help="the broker's fingerprint, sha256:<hex>")
    ap.add_argument("--suite", default="x25519", choices=["x25519", "p256"])
    ap.add_argument("--identity", help="Ed25519 PEM key to authenticate with (mode 0600)")
    ap.add_argument("--level", default="STRICT", help="STRICT, SECURE, STANDARD, PERMISSIVE")
    ap.add_argument("--input", default="", help="JSON value visible to the script as `input`")
    ap.add_argument("--stream", action="store_true", help="print events as they arrive")
    ap.add_argument(
        "--tools", action="store_true", help="list the tools scripts may call (one JSON per line)"
    )
    ap.add_argument("code", nargs="?", help="JavaScript, run as the body of an async function")
    args = ap.parse_args(argv)
    if (args.code is None) != args.tools:
        ap.error("give either CODE or --tools")

    identity = load_identity(args.identity) if args.identity else None
    job = dict(level=args.level, input_json=args.input)
    try:
        with EnclaveClient(args.broker, args.pin, suite=args.suite, identity=identity) as client:
            if args.tools:
                for tool in client.list_tools():
                    print(json.dumps(dataclasses.asdict(tool)))
                return 0
            if args.stream:
                for event in client.execute_stream(args.code, **job):
                    print(json.dumps(json_format.MessageToDict(event)), flush=True)
                return 0 if event.WhichOneof("event") == "final" and event.final.HasField(
                    "result_json"
                ) else 1
            out = client.execute(args.code, **job)
            for line in out.console:
                print(line, file=sys.stderr)
            if out.ok:
                print(out.result_json)
                return 0
            print(f"job failed: {json_format.MessageToJson(out.error)}", file=sys.stderr)
            return 1
    except EnclaveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
