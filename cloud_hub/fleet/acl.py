"""Mosquitto password and ACL files for the registered devices.

Passwords are hashed in ``mosquitto_passwd``'s own format (``$7$``: PBKDF2-HMAC-SHA512,
101 iterations, 12-byte salt, base64), so the hub stores the hash at registration and
writes the password file without ever keeping a clear-text password. The ACL uses
mosquitto's ``pattern`` lines with ``%u`` so a device (user name = device id) may only
publish under its own id and only read its own ``desired`` document.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

ITERATIONS = 101
SALT_LEN = 12


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = salt if salt is not None else os.urandom(SALT_LEN)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    try:
        _, kind, it, salt, want = hashed.split("$")
    except ValueError:
        return False
    if kind != "7":
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(it))
    return hmac.compare_digest(base64.b64encode(got).decode(), want)


def new_password() -> str:
    return secrets.token_urlsafe(24)


def acl_text(prefix: str, hub_users: Iterable[str] = ("hub",)) -> str:
    lines = ["# Written by `cloud-hub fleet acl`: devices publish only under their own id.", ""]
    for user in hub_users:
        lines += [f"user {user}", f"topic readwrite {prefix}/#", "topic read $share/hub/#", ""]
    lines += [
        "# every other user is a device whose user name is its device id",
        f"pattern write {prefix}/devices/%u/state",
        f"pattern write {prefix}/devices/%u/events",
        f"pattern write {prefix}/devices/%u/telemetry",
        f"pattern read {prefix}/devices/%u/desired",
        "",
    ]
    return "\n".join(lines)


def write_acl_files(out_dir: str | Path, prefix: str, device_hashes: dict[str, str],
                    hub_users: dict[str, str]) -> tuple[Path, Path]:
    """Write ``passwd`` and ``acl`` into ``out_dir``; ``hub_users`` maps user → password hash."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in list(device_hashes) + list(hub_users):
        if ":" in name or not name or any(c in name for c in "#+/\n"):
            from edge_runtime.errors import ValidationError

            raise ValidationError(f"user name {name!r} cannot be written to a mosquitto password file",
                                  field="device_id")
    passwd = out / "passwd"
    acl = out / "acl"
    body = "".join(f"{u}:{h}\n" for u, h in {**hub_users, **device_hashes}.items() if h)
    _atomic_write(passwd, body, 0o600)
    _atomic_write(acl, acl_text(prefix, hub_users), 0o644)
    return passwd, acl


def _atomic_write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
