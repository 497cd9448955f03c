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
    # change marker, set by a database trigger on every insert/update (migration 0005_fleet_rev)
    Column("rev", BigInteger, nullable=False, default=0, server_default="0"),
    Index("ix_fleet_devices_rev", "rev"),
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
    Column("rev", BigInteger, nullable=False, default=0, server_default="0"),  # see fleet_devices.rev
    Index("ix_fleet_device_state_rev", "rev"),
)

desired = Table(
    "fleet_desired", metadata,
    Column("device_id", String(128), primary_key=True),
    Column("desired_id", String(128), nullable=False),
    Column("rollout_id", String(128), nullable=True),
    Column("doc", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("rev", BigInteger, nullable=False, default=0, server_default="0"),  # see fleet_devices.rev
    Index("ix_fleet_desired_rev", "rev"),
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
    # PostgreSQL: the writing transaction's id (column default txid_current(), migration
    # 0005_fleet_xid), so the controller's incremental aggregate also reads rows committed after a
    # row with a higher id; 0 on SQLite (one writer: ids are in commit order)
    Column("xid", BigInteger, nullable=False, server_default="0"),
    UniqueConstraint("device_id", "seq", "slot", "sha256", name="uq_fleet_slot_stats"),
    Index("ix_fleet_slot_stats_model", "name", "version", "slot", "end"),
    Index("ix_fleet_slot_stats_device", "device_id", "end"),
    Index("ix_fleet_slot_stats_xid", "xid"),
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


# ---- change markers (the rollout controller's cached device index, issue 14) -------------------
# Every insert/update of fleet_devices, fleet_device_state and fleet_desired gets a ``rev`` from a
# database trigger, whoever writes (this hub, another replica, an older version, plain SQL); a
# delete leaves a tombstone. A reader that remembers a *mark* re-reads only the devices whose rows
# changed since (cloud_hub.fleet.devindex):
# * SQLite (one writer at a time): rev = a counter bumped per row; mark = counter + 1.
# * PostgreSQL: rev = the writing transaction's id (txid_current()); mark = the xmin of the
#   reader's snapshot taken *before* it reads, i.e. every transaction with a smaller id had
#   finished — a transaction still open then has an id >= mark and is read again next time.
rev_counter = Table(
    "fleet_rev", metadata,
    Column("id", Integer, primary_key=True),
    Column("rev", BigInteger, nullable=False),
)

device_gone = Table(
    "fleet_device_gone", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(128), nullable=False),
    Column("rev", BigInteger, nullable=False),
    Index("ix_fleet_device_gone_rev", "rev"),
)

# (table, its device id column) whose changes the triggers record
REV_TABLES = (("fleet_devices", "id"), ("fleet_device_state", "device_id"), ("fleet_desired", "device_id"))


def rev_trigger_names() -> list[str]:
    return [f"{t}_rev_{op}" for t, _ in REV_TABLES for op in ("ins", "upd", "del", "mov")]


def _sqlite_rev_triggers(conn) -> None:
    conn.exec_driver_sql("INSERT INTO fleet_rev (id, rev) SELECT 1, 0 WHERE NOT EXISTS (SELECT 1 FROM fleet_rev)")
    bump = "UPDATE fleet_rev SET rev = rev + 1 WHERE id = 1;"
    for table, col in REV_TABLES:
        stamp = (f"UPDATE {table} SET rev = COALESCE((SELECT rev FROM fleet_rev WHERE id = 1), 0) "
                 f"WHERE rowid = NEW.rowid;")
        gone = f"INSERT INTO fleet_device_gone (device_id, rev) SELECT OLD.{col}, rev FROM fleet_rev WHERE id = 1;"
        for op, when, body in (
            ("ins", "AFTER INSERT", bump + stamp),
            # WHEN: the stamp's own update (rev changes) does not stamp again
            ("upd", "AFTER UPDATE", bump + stamp),
            ("del", "AFTER DELETE", bump + gone),
            # a row whose device id changes: the old id is gone
            ("mov", "AFTER UPDATE", bump + gone),
        ):
            cond = {"upd": " WHEN NEW.rev IS OLD.rev", "mov": f" WHEN NEW.{col} IS NOT OLD.{col}"}.get(op, "")
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_rev_{op}")
            conn.exec_driver_sql(f"CREATE TRIGGER {table}_rev_{op} {when} ON {table} FOR EACH ROW{cond} "
                                 f"BEGIN {body} END")


def _pg_rev_triggers(conn) -> None:
    conn.exec_driver_sql("CREATE OR REPLACE FUNCTION fleet_rev_stamp() RETURNS trigger LANGUAGE plpgsql AS $$ "
                         "BEGIN NEW.rev := txid_current(); RETURN NEW; END $$")
    for table, col in REV_TABLES:
        fn = f"{table}_rev_gone"
        conn.exec_driver_sql(f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                             f"BEGIN INSERT INTO fleet_device_gone (device_id, rev) "
                             f"VALUES (OLD.{col}, txid_current()); RETURN NULL; END $$")
        for op, when, func in (("ins", "BEFORE INSERT", "fleet_rev_stamp"),
                               ("upd", "BEFORE UPDATE", "fleet_rev_stamp"),
                               ("del", "AFTER DELETE", fn),
                               ("mov", "AFTER UPDATE", fn)):
            cond = f" WHEN (OLD.{col} IS DISTINCT FROM NEW.{col})" if op == "mov" else ""
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_rev_{op} ON {table}")
            conn.exec_driver_sql(f"CREATE TRIGGER {table}_rev_{op} {when} ON {table} FOR EACH ROW{cond} "
                                 f"EXECUTE PROCEDURE {func}()")


@migration("0005_fleet_rev")
def _add_revs(conn) -> None:
    """Change markers for the controller's device index: a ``rev`` column (+ index) on the three
    device tables, the counter and tombstone tables, and the triggers that keep them."""
    from sqlalchemy import inspect

    rev_counter.create(conn, checkfirst=True)
    device_gone.create(conn, checkfirst=True)
    for table in (devices, device_state, desired):
        insp = inspect(conn)
        if "rev" not in {c["name"] for c in insp.get_columns(table.name)}:
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN rev BIGINT NOT NULL DEFAULT 0")
        if f"ix_{table.name}_rev" not in {i["name"] for i in insp.get_indexes(table.name)}:
            conn.exec_driver_sql(f"CREATE INDEX ix_{table.name}_rev ON {table.name} (rev)")
    if conn.dialect.name == "sqlite":
        _sqlite_rev_triggers(conn)
    elif conn.dialect.name == "postgresql":
        _pg_rev_triggers(conn)


@migration("0005_fleet_xid")
def _add_slot_xid(conn) -> None:
    """``fleet_slot_stats.xid``: on PostgreSQL defaulting to the inserting transaction's id (rows
    stored before get 0: committed long ago), on SQLite always 0."""
    from sqlalchemy import inspect

    insp = inspect(conn)
    if "xid" not in {c["name"] for c in insp.get_columns(slot_stats.name)}:
        conn.exec_driver_sql(f"ALTER TABLE {slot_stats.name} ADD COLUMN xid BIGINT NOT NULL DEFAULT 0")
    if "ix_fleet_slot_stats_xid" not in {i["name"] for i in insp.get_indexes(slot_stats.name)}:
        conn.exec_driver_sql(f"CREATE INDEX ix_fleet_slot_stats_xid ON {slot_stats.name} (xid)")
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ALTER TABLE {slot_stats.name} ALTER COLUMN xid SET DEFAULT txid_current()")
