"""Broker configuration for the registered devices: Mosquitto files the hub writes and tests.

Passwords are hashed in ``mosquitto_passwd``'s own format (``$7$``: PBKDF2-HMAC-SHA512,
101 iterations, 12-byte salt, base64), so the hub stores the hash at registration and
writes the password file without ever keeping a clear-text password. The ACL uses
mosquitto's ``pattern`` lines with ``%u`` so a device (user name = device id) may only
publish under its own id and only read its own ``desired`` document and acks.

Why the ready ``mosquitto.conf`` uses the dynamic-security plugin rather than ``acl_file``:
Mosquitto 2.0's ``acl_file`` is checked on PUBLISH and on delivery, never on SUBSCRIBE (2.0.11
grants every subscription, ``deny`` lines included — tested). A device could therefore join the
hub's shared subscription ``$share/hub/…/telemetry``: the broker hands it a share of every
device's windows and the ACL then discards them at delivery, so the hub never sees them. The
dynamic-security plugin (shipped with Mosquitto 2.0) checks SUBSCRIBE, and binds each device's
user to its own client id, so a device can neither take the hub's share nor connect as another
device (which would knock that device off). ``dynamic-security.json`` is written from the same
registry and hashes (its password fields are the ``$7$`` hash's salt and digest).
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
        f"pattern read {prefix}/devices/%u/ack",
        "",
        "# NOTE: Mosquitto 2.0 does not check SUBSCRIBE against this file, so with it alone a device",
        "# can join the hub's shared subscription and starve it. The mosquitto.conf written next to",
        "# this file uses the dynamic-security plugin (dynamic-security.json), which does.",
        "",
    ]
    return "\n".join(lines)


#: where Debian/Ubuntu, Fedora/RHEL, Alpine and Homebrew install Mosquitto 2.0's plugin
DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib64/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/opt/homebrew/lib/mosquitto_dynamic_security.so",
)


def find_dynsec_plugin() -> str | None:
    return next((p for p in DYNSEC_PLUGIN_PATHS if Path(p).is_file()), None)


def _dynsec_password(hashed: str) -> dict[str, object]:
    """``$7$iterations$salt$digest`` → the plugin's ``password``/``salt``/``iterations`` fields."""
    try:
        _, kind, it, salt, digest = hashed.split("$")
        if kind != "7":
            raise ValueError(kind)
        return {"password": digest, "salt": salt, "iterations": int(it)}
    except ValueError as exc:
        from edge_runtime.errors import ValidationError

        raise ValidationError("a stored credential is not a mosquitto $7$ hash", field="credentials_hash") from exc


def dynsec_document(prefix: str, device_hashes: dict[str, str], hub_users: dict[str, str],
                    client_ids: dict[str, str], hub_group: str = "hub") -> dict[str, object]:
    """The dynamic-security plugin's configuration: one role per device (literal topics, its own
    client id bound), one role for the hub; everything not allowed is denied."""

    def acl(kind: str, topic_: str) -> dict[str, object]:
        return {"acltype": kind, "topic": topic_, "allow": True}

    roles: list[dict[str, object]] = [{"rolename": "hub", "acls": [
        acl(kind, t) for kind in ("publishClientSend", "publishClientReceive", "subscribePattern",
                                  "unsubscribePattern")
        for t in (f"{prefix}/#", f"$share/{hub_group}/{prefix}/#")]}]
    clients: list[dict[str, object]] = []
    for user, hashed in hub_users.items():
        if hashed:
            clients.append({"username": user, "textName": "hub", "roles": [{"rolename": "hub"}],
                            **_dynsec_password(hashed)})
    for dev, hashed in sorted(device_hashes.items()):
        base = f"{prefix}/devices/{dev}"
        role = f"device:{dev}"
        roles.append({"rolename": role, "acls": (
            [acl("publishClientSend", f"{base}/{k}") for k in ("state", "events", "telemetry")]
            + [acl(kind, f"{base}/{k}") for k in ("desired", "ack")
               for kind in ("subscribeLiteral", "publishClientReceive", "unsubscribeLiteral")])})
        clients.append({"username": dev, "clientid": client_ids[dev], "roles": [{"rolename": role}],
                        **_dynsec_password(hashed)})
    return {"clients": clients, "roles": roles, "groups": [],
            "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                                 "subscribe": False, "unsubscribe": False}}


def mosquitto_conf(out: Path, port: int, bind: str, plugin: str, run_as: str | None = None,
                   max_queued_messages: int = 200_000) -> str:
    lines = [
        "# Written by `cloud-hub fleet acl`: a Mosquitto 2.0 broker for the fleet.",
        f"# Start it with: mosquitto -c {out / 'mosquitto.conf'}",
        "per_listener_settings false",
        f"listener {port} {bind}".rstrip(),
        "allow_anonymous false",
        "# queued QoS 1 messages (the hub's persistent session while it restarts) survive a restart",
        "persistence true",
        f"persistence_location {out / 'data'}/",
        "autosave_interval 5",
        f"max_queued_messages {max_queued_messages}",
        "max_inflight_messages 100",
        "# authentication, per-device topic rules checked on PUBLISH, SUBSCRIBE and delivery, and",
        "# each device's user bound to its own client id: the dynamic-security plugin",
        f"plugin {plugin}",
        f"plugin_opt_config_file {out / 'dynamic-security.json'}",
    ]
    if run_as:
        lines.insert(3, f"user {run_as}")
    return "\n".join(lines) + "\n"


def write_broker_config(out_dir: str | Path, prefix: str, device_hashes: dict[str, str],
                        hub_users: dict[str, str], client_ids: dict[str, str], *, port: int = 1883,
                        bind: str = "", plugin: str | None = None, run_as: str | None = None
                        ) -> dict[str, Path]:
    """``passwd``, ``acl``, ``dynamic-security.json`` and a ready ``mosquitto.conf`` in ``out_dir``."""
    from edge_runtime.errors import ValidationError

    if not 1 <= int(port) <= 65535:
        raise ValidationError(f"--port must be 1-65535 (got {port})", field="port")
    plugin = plugin or find_dynsec_plugin()
    if plugin is None:
        raise ValidationError("cannot find Mosquitto 2.0's mosquitto_dynamic_security.so (looked in "
                              + ", ".join(DYNSEC_PLUGIN_PATHS) + "); pass its path with --plugin",
                              field="plugin")
    if not any(hub_users.values()):
        raise ValidationError("the hub's broker account needs a password (HUB_MQTT_PASSWORD or --hub-password)",
                              field="hub_password")
    out = Path(out_dir).resolve()
    passwd, acl = write_acl_files(out, prefix, device_hashes, hub_users)
    (out / "data").mkdir(exist_ok=True)
    dynsec = out / "dynamic-security.json"
    import json

    _atomic_write(dynsec, json.dumps(dynsec_document(prefix, device_hashes, hub_users, client_ids), indent=1),
                  0o600)
    conf = out / "mosquitto.conf"
    _atomic_write(conf, mosquitto_conf(out, int(port), bind, plugin, run_as), 0o644)
    return {"passwd": passwd, "acl": acl, "dynamic_security": dynsec, "conf": conf}


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
