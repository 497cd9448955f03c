"""Running as a systemd service: the unit file ``edge-runtime install-service`` writes, and
``sd_notify`` (readiness, watchdog, status) without a libsystemd dependency.

``sd_notify`` is one datagram on the Unix socket named by ``$NOTIFY_SOCKET`` (an abstract
socket when it starts with ``@``); outside systemd the variable is unset and every call is a
no-op, so the daemon runs the same under a shell, a container or a test.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "edgefleet-device.service"
WATCHDOG_SEC = 30


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"WATCHDOG=1"``, ``"STATUS=…"``) to systemd.

    Returns False (and does nothing) when not started by systemd with ``Type=notify``;
    a failing socket never raises: the watchdog then fires and systemd restarts us,
    which is the right outcome for a daemon that cannot reach its supervisor.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


def watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` when systemd expects pings from this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


@dataclass(frozen=True)
class UnitOptions:
    """What the unit depends on: the command, the config, the account and the store."""

    exec_path: Path
    config: Path
    user: str
    store_dir: Path
    watchdog_s: int = WATCHDOG_SEC


def render_unit(opts: UnitOptions) -> str:
    """The ``edgefleet-device.service`` unit.

    Hardened the way a device daemon should be: its own account, the whole file system
    read-only except the model store (``ProtectSystem=strict`` + ``ReadWritePaths``),
    restarted on failure, a watchdog fed from the daemon's main loop, logs to journald.
    """
    return f"""\
[Unit]
Description=edgefleet device daemon (local inference, model store, fleet link)
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={opts.exec_path} run --config {opts.config}
User={opts.user}
Group={opts.user}
Restart=on-failure
RestartSec=5
WatchdogSec={opts.watchdog_s}
TimeoutStopSec=30
ProtectSystem=strict
ReadWritePaths={opts.store_dir}
ProtectHome=true
PrivateTmp=true
PrivateDevices=true
NoNewPrivileges=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectControlGroups=true
RestrictSUIDSGID=true
StandardOutput=journal
StandardError=journal
SyslogIdentifier=edgefleet-device
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=multi-user.target
"""
