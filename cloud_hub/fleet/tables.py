"""Fleet tables: device registry, reported state, desired documents, events, telemetry windows.

Dedupe lives in the schema: a telemetry window is unique on (device_id, seq) and its
per-slot rows on (device_id, seq, slot, sha256), an event on its ``event_id``; the
ingest inserts with "on conflict do nothing", so a window replayed by a device after
a reconnect (or delivered twice by the broker) is stored once.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from cloud_hub.db import create_tables, metadata, migration

devices = Table(
    "fleet_devices", metadata,
    Column("id", String(128), primary_key=True),
    Column("tags", JSON, nullable=False, default=dict),
    Column("profile", String(64), nullable=False, default=""),
    # mosquitto_passwd format ($7$ PBKDF2-SHA512), so the password file is written from here
    Column("credentials_hash", Text, nullable=True),
    Column("registered", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
)

device_state = Table(
    "fleet_device_state", metadata,
    Column("device_id", String(128), primary_key=True),
    Column("online", Boolean, nullable=False, default=False),
    Column("state", JSON, nullable=False),  # last DeviceState document
    Column("applied_desired_id", String(128), nullable=True),
    Column("last_seen", Float, nullable=True),  # hub clock, any message from the device
    Column("last_window_at", Float, nullable=True),  # hub clock, last telemetry window
    Column("last_seq", BigInteger, nullable=True),
    Column("dropped_windows", Integer, nullable=False, default=0),
    # windows refused at ingest (cloud_hub.fleet.validate): counted, the last reason kept
    Column("rejected_windows", Integer, nullable=False, default=0, server_default="0"),
    Column("rejected_reason", Text, nullable=True),
)

desired = Table(
    "fleet_desired", metadata,
    Column("device_id", String(128), primary_key=True),
    Column("desired_id", String(128), nullable=False),
    Column("rollout_id", String(128), nullable=True),
    Column("doc", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)

events = Table(
    "fleet_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(128), nullable=False, unique=True),
    Column("device_id", String(128), nullable=False),
    Column("step", String(32), nullable=False),
    Column("slot", String(16), nullable=True),
    Column("bundle", JSON, nullable=True),
    Column("desired_id", String(128), nullable=True),
    Column("rollout_id", String(128), nullable=True),
    Column("reason", Text, nullable=True),
    Column("ts", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    Index("ix_fleet_events_device", "device_id", "id"),
    Index("ix_fleet_events_rollout", "rollout_id", "id"),
)

windows = Table(
    "fleet_windows", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("start", Float, nullable=False),
    Column("end", Float, nullable=False),
    Column("rss_bytes", BigInteger, nullable=False, default=0),
    Column("cpu_percent", Float, nullable=False, default=0.0),
    Column("dropped_windows", Integer, nullable=False, default=0),
    Column("received_at", Float, nullable=False),
    UniqueConstraint("device_id", "seq", name="uq_fleet_windows_device_seq"),
    Index("ix_fleet_windows_end", "end"),
)

slot_stats = Table(
    "fleet_slot_stats", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("start", Float, nullable=False),
    Column("end", Float, nullable=False),
    Column("slot", String(16), nullable=False),
    Column("name", String(256), nullable=False),
    Column("version", String(128), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("requests", Integer, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
    Column("calls", Integer, nullable=False, default=0, server_default="0"),
    Column("errored_calls", Integer, nullable=False, default=0, server_default="0"),
    Column("latency", JSON, nullable=False),
    Column("scores", JSON, nullable=False),
    Column("decisions", JSON, nullable=False),
    Column("compared", Integer, nullable=False, default=0),
    Column("decision_changed", Integer, nullable=False, default=0),
    Column("compared_calls", Integer, nullable=False, default=0, server_default="0"),
    Column("changed_share", Float, nullable=False, default=0.0, server_default="0"),
    Column("divergence", JSON, nullable=False),
    Column("dropped", Integer, nullable=False, default=0),
    # True when the ingest checked the window (cloud_hub.fleet.validate) before storing it; the
    # aggregate re-checks only the other rows (stored before the check existed, or written directly)
    Column("validated", Boolean, nullable=False, default=False, server_default=false()),
    UniqueConstraint("device_id", "seq", "slot", "sha256", name="uq_fleet_slot_stats"),
    Index("ix_fleet_slot_stats_model", "name", "version", "slot", "end"),
    Index("ix_fleet_slot_stats_device", "device_id", "end"),
)

ALL = (devices, device_state, desired, events, windows, slot_stats)

migration("0005_fleet")(create_tables(*ALL))


@migration("0005_fleet_calls")
def _add_call_counts(conn) -> None:
    """Databases made before the call counts (issue 18) get the new columns; fresh ones have them."""
    from sqlalchemy import inspect

    for table, names in ((slot_stats, ("calls", "errored_calls", "compared_calls", "changed_share")),
                         (device_state, ("rejected_windows", "rejected_reason"))):
        have = {c["name"] for c in inspect(conn).get_columns(table.name)}
        for name in names:
            if name in have:
                continue
            col = table.c[name]
            kind = col.type.compile(conn.dialect)
            default = f" NOT NULL DEFAULT {col.server_default.arg}" if col.server_default is not None else ""
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}{default}")


@migration("0005_fleet_validated")
def _add_validated(conn) -> None:
    """Rows stored before this column are marked not validated: the aggregate re-checks them."""
    from sqlalchemy import inspect

    if "validated" in {c["name"] for c in inspect(conn).get_columns(slot_stats.name)}:
        return
    default = false().compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {slot_stats.name} ADD COLUMN validated BOOLEAN NOT NULL DEFAULT {default}")
