"""gRPC stubs generated from proto/ with grpcio-tools, at run time, into a temporary
directory (or `ENCLAVE_PY_GEN_DIR`). Nothing generated is committed.

    from enclave_client.stubs import load
    pb = load()
    pb.broker_pb2.ClientHello(...)
    pb.broker_pb2_grpc.BrokerStub(channel)
    pb.tools_pb2_grpc.add_ToolServiceServicer_to_server(...)   # a tool service (tool_server.py)

`./generate.sh [OUT_DIR]` writes them to OUT_DIR (default build/gen) to read.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile
import threading
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
# examples/python/enclave_client -> repository root
DEFAULT_PROTO_DIR = HERE.parent.parent.parent / "proto" / "proto"
PROTO_FILES = [
    "enclave/v1/job.proto",
    "enclave/v1/executor.proto",
    "enclave/v1/broker.proto",
    "enclave/v1/tools.proto",
]
MODULES = [
    "job_pb2",
    "executor_pb2",
    "executor_pb2_grpc",
    "broker_pb2",
    "broker_pb2_grpc",
    "tools_pb2",
    "tools_pb2_grpc",
]

_lock = threading.Lock()
_loaded: types.SimpleNamespace | None = None


def proto_dir() -> Path:
    return Path(os.environ.get("ENCLAVE_PROTO_DIR", DEFAULT_PROTO_DIR))


def generate(out_dir: Path, proto_root: Path | None = None) -> Path:
    """Runs protoc (from grpcio-tools) over the enclave.v1 files into `out_dir`."""
    from grpc_tools import protoc  # imported lazily: only needed here

    proto_root = Path(proto_root or proto_dir())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = [f for f in PROTO_FILES if not (proto_root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"proto files not found under {proto_root}: {missing}")
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}: {' '.join(args)}")
    return out_dir


def load(gen_dir: str | os.PathLike | None = None) -> types.SimpleNamespace:
    """Generates (once per process) and imports the stubs. Returns a namespace with
    `job_pb2`, `executor_pb2`, `executor_pb2_grpc`, `broker_pb2`, `broker_pb2_grpc`,
    `tools_pb2`, `tools_pb2_grpc`."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        gen_dir = gen_dir or os.environ.get("ENCLAVE_PY_GEN_DIR")
        if gen_dir is None:
            gen_dir = tempfile.mkdtemp(prefix="enclave-py-stubs-")
            atexit.register(shutil.rmtree, gen_dir, True)
        out = generate(Path(gen_dir))
        if str(out) not in sys.path:
            sys.path.insert(0, str(out))
        ns = types.SimpleNamespace()
        for name in MODULES:
            setattr(ns, name, importlib.import_module(f"enclave.v1.{name}"))
        _loaded = ns
        return ns

