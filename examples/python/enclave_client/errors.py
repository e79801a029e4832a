"""Exceptions raised by the enclave Python client.

Local protocol failures (pin mismatch, downgrade, a record that does not authenticate, a
truncated stream) are `ProtocolError`s: the client refuses to continue. A gRPC status from
the broker is a `RemoteError`; per docs/PROTOCOL.md §11 statuses are not authenticated, so
it only ever means "no sealed answer".
"""

from __future__ import annotations


class EnclaveError(Exception):
    """Base class of every error this package raises."""


class ProtocolError(EnclaveError):
    """A local protocol check failed; the client refuses to continue."""


class HandshakeError(ProtocolError):
    """The ServerHello (or our own handshake state) is not acceptable."""


class PinMismatchError(HandshakeError):
    """The broker's identity key does not match the pinned fingerprint (§5.3 step 3)."""

    def __init__(self, expected: str, actual: str):
        super().__init__(
            f"broker identity {actual} does not match the pinned fingerprint {expected}: "
            "refusing to connect (wrong broker, or a man in the middle)"
        )
        self.expected = expected
        self.actual = actual


class DowngradeError(HandshakeError):
    """The broker answered with another version or suite than the one offered (§5.3 step 1)."""


class InvalidShareError(HandshakeError):
    """A peer key share is malformed, off-curve, low-order or gives an all-zero secret (§4)."""


class ClientAuthRequiredError(HandshakeError):
    """The broker requires client authentication and no identity key was configured."""


class RecordError(ProtocolError):
    """A sealed record was refused: wrong kind, position, epoch, or it failed authentication."""


class TruncatedStreamError(ProtocolError):
    """An ExecuteStream reply ended without its STREAM_FINAL record (§10.2 rule 4)."""

    def __init__(self, message: str, status=None):
        super().__init__(message)
        #: the gRPC status code the stream ended with, if it ended with an error
        self.status = status


class SequenceExhaustedError(ProtocolError):
    """Sequence numbers or epochs are exhausted; start a new session."""


class RemoteError(EnclaveError):
    """The broker (or something on the path) answered with a gRPC error status."""

    def __init__(self, method: str, code, details: str):
        super().__init__(f"{method} failed: {getattr(code, 'name', code)}: {details}")
        #: a `grpc.StatusCode`
        self.code = code
        self.details = details
