"""Ed25519 identity key files (docs/PROTOCOL.md §3)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .protocol import fingerprint, public_key_bytes


def generate_identity(path: str | os.PathLike) -> Ed25519PrivateKey:
    """Writes a new key: PKCS#8 PEM, mode 0600, never over an existing file; the
    SubjectPublicKeyInfo PEM goes to `path + ".pub"`. Returns the key."""
    path = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pub_path = Path(str(path) + ".pub")
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(pub)
    return key


def load_identity(path: str | os.PathLike) -> Ed25519PrivateKey:
    """Reads a PKCS#8 PEM Ed25519 private key, refusing (on Unix) a file that group or
    others may read or write."""
    path = Path(path)
    if os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o066:
            raise PermissionError(
                f"{path} has mode {mode:04o}: an identity key must not be readable or "
                f"writable by group or others (chmod 600 {path})"
            )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def load_public_key_fingerprint(path: str | os.PathLike) -> str:
    """Fingerprint of a `PUBLIC KEY` PEM file (e.g. `broker.key.pub`): the pin."""
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    return fingerprint(public_key_bytes(key))


def identity_fingerprint(key: Ed25519PrivateKey) -> str:
    return fingerprint(public_key_bytes(key))
