"""ed25519 keys and signatures for bundles (``cryptography``).

Private keys are PKCS#8 PEM files; public keys are SubjectPublicKeyInfo PEM.
A key id is the first 16 hex digits of sha256 of the raw public key, so a
verifier can tell which fleet key signed a bundle.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_runtime.errors import BundleError


def generate_keypair(private_path: str | Path, public_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write a new key pair; the private key file is created with mode 0600."""
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(public_pem(key.public_key()))
    return private_path, public_path


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(source: str | Path | bytes) -> Ed25519PrivateKey:
    """Load a private key from a PEM file path or PEM bytes."""
    data = _read(source, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"private key{_origin(source)} is not a PEM ed25519 key: "
                          f"{_first_sentence(exc)}", field="key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"private key{_origin(source)} is not an ed25519 key", field="key")
    return key


def load_public_key(source: str | Path | bytes) -> Ed25519PublicKey:
    data = _read(source, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"public key{_origin(source)} is not a PEM ed25519 key: "
                          f"{_first_sentence(exc)}", field="public_key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"public key{_origin(source)} is not an ed25519 key", field="public_key")
    return key


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(data: bytes, key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.sign(data)).decode()


def verify(data: bytes, signature_b64: str, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), data)
        return True
    except (InvalidSignature, ValueError):
        return False


def _read(source: str | Path | bytes, what: str) -> bytes:
    if isinstance(source, bytes):
        return source
    text = str(source)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {what} {source}: {exc.strerror}",
                          field="public_key" if what == "public key" else "key") from exc


def _origin(source: str | Path | bytes) -> str:
    """" FILE" when the key came from a file, "" for inline PEM."""
    if isinstance(source, bytes) or str(source).lstrip().startswith("-----BEGIN"):
        return ""
    return f" {source}"


def _first_sentence(exc: BaseException) -> str:
    """cryptography's messages run on with FAQ links; keep the first sentence."""
    return str(exc).split(". ")[0].strip().rstrip(".") or type(exc).__name__
