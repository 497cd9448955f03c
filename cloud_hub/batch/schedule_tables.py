"""Schedule store: ``batch_schedules`` and ``batch_schedule_firings``.

A firing row is unique per (schedule, scheduled time): the replica whose insert
wins owns the firing, so each firing creates at most one job across replicas.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from cloud_hub.db import create_tables, metadata, migration

batch_schedules = Table(
    "batch_schedules",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("cron", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("model_ref", String(401), nullable=False),
    Column("input", Text, nullable=False),  # may hold {date} / {datetime}
    Column("output", Text, nullable=False),  # must make each firing's file distinct
    Column("spec", Text, nullable=False),  # JSON: id_columns, batch_size, engine, ...
    Column("catch_up", String(16), nullable=False),  # run_once | skip
    Column("paused", Boolean, nullable=False, default=False),
    Column("next_fire_at", DateTime(timezone=True), nullable=False),
    Column("last_fire_at", DateTime(timezone=True)),
    Column("created_by", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_batch_schedules_due", "paused", "next_fire_at"),
)

batch_schedule_firings = Table(
    "batch_schedule_firings",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "schedule_id",
        String(32),
        ForeignKey("batch_schedules.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("fire_at", DateTime(timezone=True), nullable=False),  # the scheduled time (UTC)
    Column("kind", String(16), nullable=False),  # cron | catch_up | manual
    Column("status", String(16), nullable=False),  # claimed | submitted | failed | skipped
    Column("job_id", String(32)),
    Column("model_ref", String(401)),
    Column("model_version", String(100)),  # resolved when it fired
    Column("model_digest", String(64)),
    Column("output", Text),
    Column("skipped", String(32)),  # missed firings skipped (count) for a skip record
    Column("error", Text),
    Column("error_code", String(64)),
    Column("runner", String(64)),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("schedule_id", "fire_at", name="uq_schedule_firing"),
    Index("ix_batch_schedule_firings_schedule", "schedule_id", "fire_at"),
)

migration("0810_batch_schedules")(create_tables(batch_schedules, batch_schedule_firings))
