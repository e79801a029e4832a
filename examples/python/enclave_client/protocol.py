"""enclave protocol v1, client side, written from docs/PROTOCOL.md alone.

Pure cryptography and byte layouts, no gRPC and no protobuf: section numbers (§) refer to
docs/PROTOCOL.md. The gRPC client in `client.py` drives these objects.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .errors import (
    DowngradeError,
    HandshakeError,
    InvalidShareError,
    PinMismatchError,
    RecordError,
    SequenceExhaustedError,
    TruncatedStreamError,
)

PROTOCOL_VERSION = 1
LABEL_PREFIX = b"enclave1 "
SERVER_SIGNATURE_CONTEXT = b"enclave v1 server signature\x00"
CLIENT_SIGNATURE_CONTEXT = b"enclave v1 client signature\x00"
TAG_LEN = 16
MAX_PLAINTEXT = 1 << 24  # §8.1: plaintexts are at most 16 MiB
SEQ_LIMIT = (1 << 64) - 1  # §8.1: a seq is never 2^64-1
EPOCH_LIMIT = (1 << 32) - 1

# §9.1 defaults
DEFAULT_MAX_RECORDS = 1 << 24
DEFAULT_MAX_BYTES = 1 << 36
DEFAULT_MAX_AGE_SECS = 600.0
# §9.2 default
DEFAULT_GRACE_SECS = 60.0


class Suite(IntEnum):
    """§4. Values are the proto `Suite` enum."""

    X25519 = 1  # SUITE_X25519_ED25519_AES256GCM_SHA256 (default)
    P256 = 2  # SUITE_P256_ED25519_AES256GCM_SHA256

    @classmethod
    def parse(cls, value) -> "Suite":
        if isinstance(value, Suite):
            return value
        if isinstance(value, int):
            return cls(value)
        names = {"x25519": cls.X25519, "p256": cls.P256, "p-256": cls.P256}
        try:
            return names[str(value).lower()]
        except KeyError:
            raise ValueError(f"unknown suite {value!r}: use 'x25519' or 'p256'") from None


class Kind(IntEnum):
    """§8.1 record kinds (proto `RecordKind`)."""

    EXECUTE_REQUEST = 1
    EXECUTE_RESULT = 2
    STREAM_REQUEST = 3
    STREAM_EVENT = 4
    STREAM_FINAL = 5
    CLOSE_REQUEST = 6
    CLOSE_RESULT = 7
    REKEY_REQUEST = 8
    REKEY_RESULT = 9
    LIST_TOOLS_REQUEST = 10
    LIST_TOOLS_RESULT = 11
    TOOL_RESULT = 12
    TOOL_RESULT_ACK = 13


class Direction(IntEnum):
    """§8.3"""

    CLIENT_TO_BROKER = 1
    BROKER_TO_CLIENT = 2


# ---------------------------------------------------------------------------------------
# §3 Fingerprints


def fingerprint(public_key: bytes) -> str:
    """`"sha256:" || lowercase_hex(SHA-256(raw 32-byte Ed25519 public key))`."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return "sha256:" + hashlib.sha256(public_key).hexdigest()


def parse_fingerprint(text: str) -> bytes:
    """Returns the 32-byte digest of a fingerprint. Accepts upper-case hex digits and
    surrounding whitespace; the prefix must be lower-case `sha256:`."""
    text = text.strip()
    if not text.startswith("sha256:"):
        raise ValueError(f"a fingerprint starts with 'sha256:': {text!r}")
    digits = text[len("sha256:") :]
    if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"a fingerprint has 64 hex digits after 'sha256:': {text!r}")
    return bytes.fromhex(digits)


def public_key_bytes(key) -> bytes:
    """Raw 32 bytes of an Ed25519 public key (given the private or the public key)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ---------------------------------------------------------------------------------------
# §4 Ephemeral key shares


class Ephemeral:
    """A fresh ephemeral ECDH key for one handshake."""

    def __init__(self, suite: Suite, secret: Optional[bytes] = None):
        self.suite = Suite.parse(suite)
        if self.suite is Suite.X25519:
            self._key = (
                x25519.X25519PrivateKey.generate()
                if secret is None
                else x25519.X25519PrivateKey.from_private_bytes(secret)
            )
            self.share = self._key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        else:
            curve = ec.SECP256R1()
            self._key = (
                ec.generate_private_key(curve)
                if secret is None
                else ec.derive_private_key(int.from_bytes(secret, "big"), curve)
            )
            self.share = self._key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )

    def exchange(self, peer_share: bytes) -> bytes:
        """The 32-byte shared secret, after validating the peer's share as §4 requires."""
        if self._key is None:
            raise HandshakeError("ephemeral key already used and erased")
        peer_share = bytes(peer_share)
        if self.suite is Suite.X25519:
            if len(peer_share) != 32:
                raise InvalidShareError(f"X25519 share must be 32 bytes, got {len(peer_share)}")
            try:
                shared = self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_share))
            except ValueError as e:  # OpenSSL itself refuses an all-zero result
                raise InvalidShareError(f"X25519 share refused: {e}") from None
            if not any(shared):
                raise InvalidShareError("all-zero X25519 shared secret (low-order share)")
        else:
            if len(peer_share) != 65 or peer_share[0] != 0x04:
                raise InvalidShareError(
                    "P-256 share must be a 65-byte uncompressed SEC1 point (0x04 || X || Y)"
                )
            try:
                point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_share)
                shared = self._key.exchange(ec.ECDH(), point)
            except ValueError as e:
                raise InvalidShareError(f"P-256 share is not a point on the curve: {e}") from None
        return shared

    def erase(self) -> None:
        # Python cannot zeroize memory; dropping the reference is the best we can do.
        self._key = None


# ---------------------------------------------------------------------------------------
# §6 Transcript encodings


def encode_client_hello(version: int, suite: int, client_share: bytes) -> bytes:
    return b"\x01" + struct.pack(">HHH", version, suite, len(client_share)) + client_share


def encode_server_hello(
    version: int,
    suite: int,
    session_id: bytes,
    server_share: bytes,
    server_identity: bytes,
    client_auth_required: bool,
) -> bytes:
    return (
        b"\x02"
        + struct.pack(">HH", version, suite)
        + session_id
        + struct.pack(">H", len(server_share))
        + server_share
        + server_identity
        + bytes([1 if client_auth_required else 0])
    )


def encode_sv(server_signature: bytes) -> bytes:
    return b"\x03" + server_signature


def encode_sf(server_finished: bytes) -> bytes:
    return b"\x04" + server_finished


def encode_ca(client_identity: bytes) -> bytes:
    return b"\x05" + client_identity


def encode_cv(client_signature: bytes) -> bytes:
    return b"\x06" + client_signature


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ---------------------------------------------------------------------------------------
# §7 Key schedule


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_label(label: bytes, context: bytes, length: int) -> bytes:
    full = LABEL_PREFIX + label
    return struct.pack(">HB", length, len(full)) + full + bytes([len(context)]) + context


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    info = hkdf_label(label, context, length)
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(secret)


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


@dataclass
class HandshakeSecrets:
    handshake_secret: bytes
    server_finished_key: bytes
    client_finished_key: bytes


def handshake_secrets(shared: bytes, h_sh: bytes) -> HandshakeSecrets:
    hs = hkdf_extract(b"\x00" * 32, shared)
    return HandshakeSecrets(
        handshake_secret=hs,
        server_finished_key=hkdf_expand_label(hs, b"s finished", h_sh, 32),
        client_finished_key=hkdf_expand_label(hs, b"c finished", h_sh, 32),
    )


def traffic_secrets(handshake_secret: bytes, h_sf: bytes) -> tuple[bytes, bytes]:
    """(client_traffic_secret_0, server_traffic_secret_0)"""
    return (
        hkdf_expand_label(handshake_secret, b"c ap traffic", h_sf, 32),
        hkdf_expand_label(handshake_secret, b"s ap traffic", h_sf, 32),
    )


@dataclass
class EpochKeys:
    """The key and IV of one direction in one epoch (§7)."""

    epoch: int
    secret: bytes
    key: bytes
    iv: bytes

    @classmethod
    def derive(cls, epoch: int, secret: bytes) -> "EpochKeys":
        return cls(
            epoch=epoch,
            secret=secret,
            key=hkdf_expand_label(secret, b"key", b"", 32),
            iv=hkdf_expand_label(secret, b"iv", b"", 12),
        )

    def next(self) -> "EpochKeys":
        if self.epoch >= EPOCH_LIMIT:
            raise SequenceExhaustedError("key epochs exhausted: start a new session")
        return EpochKeys.derive(self.epoch + 1, hkdf_expand_label(self.secret, b"traffic upd", b"", 32))


# ---------------------------------------------------------------------------------------
# §8 Records


def record_nonce(iv: bytes, seq: int) -> bytes:
    """§8.2: iv XOR (0x00000000 || u64 seq)."""
    pad = b"\x00\x00\x00\x00" + struct.pack(">Q", seq)
    return bytes(a ^ b for a, b in zip(iv, pad))


def record_ad(
    session_id: bytes,
    direction: int,
    epoch: int,
    seq: int,
    kind: int,
    request_seq: int = 0,
    event_index: int = 0,
) -> bytes:
    """§8.3: the 42 bytes of associated data."""
    return (
        session_id
        + struct.pack(">BIQBQI", direction, epoch, seq, kind, request_seq, event_index)
    )


@dataclass
class Record:
    """The fields of a `SealedRecord` (proto), independent of protobuf."""

    session_id: bytes
    epoch: int
    seq: int
    kind: int
    event_index: int
    ciphertext: bytes

    @classmethod
    def from_proto(cls, msg) -> "Record":
        return cls(
            session_id=bytes(msg.session_id),
            epoch=int(msg.epoch),
            seq=int(msg.seq),
            kind=int(msg.kind),
            event_index=int(msg.event_index),
            ciphertext=bytes(msg.ciphertext),
        )


class Sender:
    """One sending direction: epochs, sequence numbers and the rekey policy of §9.1."""

    def __init__(
        self,
        session_id: bytes,
        direction: Direction,
        traffic_secret_0: bytes,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age: float = DEFAULT_MAX_AGE_SECS,
        clock=time.monotonic,
    ):
        self.session_id = session_id
        self.direction = direction
        self.keys = EpochKeys.derive(0, traffic_secret_0)
        self.next_seq = 0
        self.max_records, self.max_bytes, self.max_age = max_records, max_bytes, max_age
        self._clock = clock
        self._records = 0
        self._bytes = 0
        self._since = clock()
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int:
        return self.keys.epoch

    def rotate(self) -> None:
        """Move to the next epoch (TLS 1.3 KeyUpdate); the old secret is dropped."""
        with self._lock:
            self._rotate_locked()

    def _rotate_locked(self) -> None:
        self.keys = self.keys.next()
        self._records = 0
        self._bytes = 0
        self._since = self._clock()

    def seal(
        self, kind: int, plaintext: bytes, request_seq: int = 0, event_index: int = 0
    ) -> Record:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"plaintext of {len(plaintext)} bytes is over the 16 MiB limit")
        with self._lock:
            if (
                self._records >= self.max_records
                or self._bytes >= self.max_bytes
                or self._clock() - self._since >= self.max_age
            ):
                self._rotate_locked()
            seq = self.next_seq
            if seq >= SEQ_LIMIT:
                raise SequenceExhaustedError("sequence numbers exhausted: start a new session")
            keys = self.keys
            ad = record_ad(
                self.session_id, self.direction, keys.epoch, seq, kind, request_seq, event_index
            )
            ct = AESGCM(keys.key).encrypt(record_nonce(keys.iv, seq), plaintext, ad)
            self.next_seq = seq + 1
            self._records += 1
            self._bytes += len(plaintext)
        return Record(self.session_id, keys.epoch, seq, int(kind), event_index, ct)


class Receiver:
    """One receiving direction: the epoch rule of §9.2 (no replay window; §8.7)."""

    def __init__(
        self,
        session_id: bytes,
        direction: Direction,
        traffic_secret_0: bytes,
        *,
        grace: float = DEFAULT_GRACE_SECS,
        clock=time.monotonic,
    ):
        self.session_id = session_id
        self.direction = direction
        self.current = EpochKeys.derive(0, traffic_secret_0)
        self.previous: Optional[EpochKeys] = None
        self.previous_expires = 0.0
        self.grace = grace
        self._clock = clock
        self._lock = threading.Lock()

    def open(self, record: Record, kind: int, request_seq: int, event_index: int) -> bytes:
        """Opens `record` as the answer we expect: `kind`, `request_seq` and `event_index`
        come from our own state, never from the record (§8.3)."""
        if record.session_id != self.session_id:
            raise RecordError("record names another session")
        if len(record.ciphertext) < TAG_LEN:
            raise RecordError("record ciphertext shorter than the GCM tag")
        if record.seq >= SEQ_LIMIT:
            raise RecordError("record seq 2^64-1 is never used")
        with self._lock:
            now = self._clock()
            if self.previous is not None and now >= self.previous_expires:
                self.previous = None  # expired previous keys are erased
            e = record.epoch
            promote = False
            if e == self.current.epoch:
                keys = self.current
            elif e == self.current.epoch + 1:
                keys = self.current.next()
                promote = True
            elif self.previous is not None and e == self.previous.epoch:
                keys = self.previous
            else:
                raise RecordError(
                    f"record epoch {e} is not acceptable (current {self.current.epoch})"
                )
            ad = record_ad(
                self.session_id, self.direction, e, record.seq, kind, request_seq, event_index
            )
            try:
                plaintext = AESGCM(keys.key).decrypt(
                    record_nonce(keys.iv, record.seq), record.ciphertext, ad
                )
            except Exception:  # cryptography.exceptions.InvalidTag
                raise RecordError(
                    "record authentication failed (tampered, reordered, or not the answer "
                    "to this request)"
                ) from None
            if promote:
                self.previous = self.current
                self.previous_expires = now + self.grace
                self.current = keys
        return plaintext


# ---------------------------------------------------------------------------------------
# §5 Handshake, client side


@dataclass
class ServerHelloFields:
    """The fields of a proto `ServerHello`, independent of protobuf."""

    version: int
    suite: int
    session_id: bytes
    server_share: bytes
    server_identity: bytes
    client_auth_required: bool
    signature: bytes
    finished: bytes

    @classmethod
    def from_proto(cls, msg) -> "ServerHelloFields":
        return cls(
            version=int(msg.version),
            suite=int(msg.suite),
            session_id=bytes(msg.session_id),
            server_share=bytes(msg.server_share),
            server_identity=bytes(msg.server_identity),
            client_auth_required=bool(msg.client_auth_required),
            signature=bytes(msg.signature),
            finished=bytes(msg.finished),
        )


class ClientHandshake:
    """§5.1 and §5.3: builds the ClientHello, checks the ServerHello, returns a session."""

    def __init__(self, pin: str, suite=Suite.X25519, ephemeral_secret: Optional[bytes] = None):
        self.pin = pin.strip()
        self._pin_digest = parse_fingerprint(pin)
        self.suite = Suite.parse(suite)
        self.version = PROTOCOL_VERSION
        self._ephemeral = Ephemeral(self.suite, ephemeral_secret)
        self.client_share = self._ephemeral.share

    def client_hello_encoding(self) -> bytes:
        return encode_client_hello(self.version, self.suite, self.client_share)

    def finish(self, sh: ServerHelloFields, **session_options) -> "ClientSession":
        # 1. version and suite are the ones offered (no downgrade)
        if sh.version != self.version or sh.suite != self.suite:
            raise DowngradeError(
                f"broker answered version {sh.version} suite {sh.suite}, "
                f"we offered version {self.version} suite {int(self.suite)}"
            )
        # 2. sizes
        if len(sh.session_id) != 16:
            raise HandshakeError("session_id must be 16 bytes")
        if len(sh.server_identity) != 32:
            raise HandshakeError("server_identity must be 32 bytes")
        # 3. the pin, in constant time
        if not hmac.compare_digest(sha256(sh.server_identity), self._pin_digest):
            raise PinMismatchError(self.pin, fingerprint(sh.server_identity))
        # 4. shared secret, validating the broker's share
        shared = self._ephemeral.exchange(sh.server_share)
        self._ephemeral.erase()
        # 5. the broker's signature over our own ClientHello and the received ServerHello
        ch = self.client_hello_encoding()
        sh_enc = encode_server_hello(
            sh.version,
            sh.suite,
            sh.session_id,
            sh.server_share,
            sh.server_identity,
            sh.client_auth_required,
        )
        h_sh = sha256(ch + sh_enc)
        if len(sh.signature) != 64:
            raise HandshakeError("server signature must be 64 bytes")
        try:
            Ed25519PublicKey.from_public_bytes(sh.server_identity).verify(
                sh.signature, SERVER_SIGNATURE_CONTEXT + h_sh
            )
        except InvalidSignature:
            raise HandshakeError("broker signature does not verify") from None
        # 6. the broker's Finished, in constant time
        secrets = handshake_secrets(shared, h_sh)
        del shared
        transcript = ch + sh_enc + encode_sv(sh.signature)
        h_sv = sha256(transcript)
        if not hmac.compare_digest(hmac_sha256(secrets.server_finished_key, h_sv), sh.finished):
            raise HandshakeError("broker Finished does not verify")
        # 7. traffic secrets
        transcript += encode_sf(sh.finished)
        client_ts, server_ts = traffic_secrets(secrets.handshake_secret, sha256(transcript))
        return ClientSession(
            session_id=sh.session_id,
            suite=self.suite,
            server_identity=sh.server_identity,
            client_auth_required=sh.client_auth_required,
            transcript=transcript,
            client_finished_key=secrets.client_finished_key,
            client_traffic_secret=client_ts,
            server_traffic_secret=server_ts,
            **session_options,
        )


@dataclass
class ClientAuthFields:
    """The fields of a proto `ClientAuth`."""

    session_id: bytes
    client_identity: bytes
    signature: bytes
    finished: bytes


class ClientSession:
    """An established session: seals requests, opens replies (§8, §9, §10)."""

    def __init__(
        self,
        *,
        session_id: bytes,
        suite: Suite,
        server_identity: bytes,
        client_auth_required: bool,
        transcript: bytes,
        client_finished_key: bytes,
        client_traffic_secret: bytes,
        server_traffic_secret: bytes,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age: float = DEFAULT_MAX_AGE_SECS,
        grace: float = DEFAULT_GRACE_SECS,
        clock=time.monotonic,
    ):
        self.session_id = session_id
        self.suite = suite
        self.server_identity = server_identity
        self.server_fingerprint = fingerprint(server_identity)
        self.client_auth_required = client_auth_required
        self._transcript = transcript  # CH || SH || SV || SF
        self._client_finished_key: Optional[bytes] = client_finished_key
        self.sender = Sender(
            session_id,
            Direction.CLIENT_TO_BROKER,
            client_traffic_secret,
            max_records=max_records,
            max_bytes=max_bytes,
            max_age=max_age,
            clock=clock,
        )
        self.receiver = Receiver(
            session_id, Direction.BROKER_TO_CLIENT, server_traffic_secret, grace=grace, clock=clock
        )

    # §5.4 / §6.4 -----------------------------------------------------------------------

    def client_auth_signing_input(self, client_identity: bytes) -> bytes:
        """What the client's key signs (for keys held elsewhere, e.g. an HSM)."""
        if len(client_identity) != 32:
            raise ValueError("client identity must be a 32-byte Ed25519 public key")
        return CLIENT_SIGNATURE_CONTEXT + sha256(self._transcript + encode_ca(client_identity))

    def authenticate_with_signature(
        self, client_identity: bytes, signature: bytes
    ) -> ClientAuthFields:
        if self._client_finished_key is None:
            raise HandshakeError("client authentication must come before the first request")
        if len(signature) != 64:
            raise ValueError("an Ed25519 signature is 64 bytes")
        h_cv = sha256(
            self._transcript + encode_ca(client_identity) + encode_cv(signature)
        )
        finished = hmac_sha256(self._client_finished_key, h_cv)
        return ClientAuthFields(self.session_id, client_identity, signature, finished)

    def authenticate(self, identity_key: Ed25519PrivateKey) -> ClientAuthFields:
        client_identity = public_key_bytes(identity_key)
        signature = identity_key.sign(self.client_auth_signing_input(client_identity))
        return self.authenticate_with_signature(client_identity, signature)

    # §8, §10 ---------------------------------------------------------------------------

    def seal_request(self, kind: Kind, plaintext: bytes) -> Record:
        """Seals one request; its `seq` names the call (replies are bound to it)."""
        if kind not in (
            Kind.EXECUTE_REQUEST,
            Kind.STREAM_REQUEST,
            Kind.CLOSE_REQUEST,
            Kind.REKEY_REQUEST,
            Kind.LIST_TOOLS_REQUEST,
            Kind.TOOL_RESULT,
        ):
            raise ValueError(f"{kind!r} is not a request kind")
        # The request is the first record sent after the handshake: the Finished key is no
        # longer useful (client authentication must come before it).
        self._client_finished_key = None
        return self.sender.seal(kind, plaintext)

    def seal_rekey_request(self) -> Record:
        """§9.1: rotate the sending key first, so the request already uses the new epoch."""
        self.sender.rotate()
        return self.seal_request(Kind.REKEY_REQUEST, b"")

    def open_reply(self, request_seq: int, kind: Kind, record: Record) -> bytes:
        """§8.7: a unary reply, bound to the request's seq, event_index 0."""
        if record.kind != kind:
            raise RecordError(f"expected a {Kind(kind).name} record, got kind {record.kind}")
        if record.event_index != 0:
            raise RecordError("a unary reply has event_index 0")
        return self.receiver.open(record, kind, request_seq, 0)

    def stream_opener(self, request_seq: int) -> "StreamOpener":
        return StreamOpener(self, request_seq)


class StreamOpener:
    """§10.2: opens the records of one ExecuteStream reply, in order, and detects
    truncation. Checking that the content agrees with the kind is left to the caller,
    which decodes the protobuf."""

    def __init__(self, session: ClientSession, request_seq: int):
        self.session = session
        self.request_seq = request_seq
        self.next_index = 0
        self.finished = False

    def open(self, record: Record) -> tuple[Kind, bytes]:
        if self.finished:
            raise RecordError("record after STREAM_FINAL")
        if record.kind not in (Kind.STREAM_EVENT, Kind.STREAM_FINAL):
            raise RecordError(f"kind {record.kind} in a stream")
        if record.event_index != self.next_index:
            raise RecordError(
                f"stream event {record.event_index} where {self.next_index} was expected "
                "(dropped, reordered or replayed)"
            )
        plaintext = self.session.receiver.open(
            record, record.kind, self.request_seq, self.next_index
        )
        self.next_index += 1
        kind = Kind(record.kind)
        if kind is Kind.STREAM_FINAL:
            self.finished = True
        return kind, plaintext

    def finish(self) -> None:
        """Call when the gRPC stream ended: refuses a stream without STREAM_FINAL."""
        if not self.finished:
            raise TruncatedStreamError(
                f"stream truncated: it ended after {self.next_index} event(s) without "
                "STREAM_FINAL"
            )
