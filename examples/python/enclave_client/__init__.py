"""Python client for the enclave broker, written from docs/PROTOCOL.md (protocol v1)."""

from .client import ClientTool, EnclaveClient, EventStream, ExecuteOutcome, ToolInfo
from .errors import (
    ClientAuthRequiredError,
    DowngradeError,
    EnclaveError,
    HandshakeError,
    InvalidShareError,
    PinMismatchError,
    ProtocolError,
    RecordError,
    RemoteError,
    TruncatedStreamError,
)
from .keys import generate_identity, identity_fingerprint, load_identity, load_public_key_fingerprint
from .protocol import Suite, fingerprint, parse_fingerprint

__all__ = [
    "ClientTool",
    "EnclaveClient",
    "EventStream",
    "ExecuteOutcome",
    "ToolInfo",
    "ClientAuthRequiredError",
    "DowngradeError",
    "EnclaveError",
    "HandshakeError",
    "InvalidShareError",
    "PinMismatchError",
    "ProtocolError",
    "RecordError",
    "RemoteError",
    "TruncatedStreamError",
    "generate_identity",
    "identity_fingerprint",
    "load_identity",
    "load_public_key_fingerprint",
    "Suite",
    "fingerprint",
    "parse_fingerprint",
]
