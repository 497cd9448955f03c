"""The ``stream_workers`` table: managed stream workers the hub runs (and restarts)."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, String, Table, Text

from cloud_hub.db import create_tables, metadata, migration

stream_workers = Table(
    "stream_workers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("model_ref", String(300), nullable=False),
    Column("source", Text, nullable=False),
    Column("sink", Text, nullable=False),
    Column("dead_letter", Text),
    Column("options", Text, nullable=False),  # JSON: batch size, wait, key field, ...
    Column("desired", String(16), nullable=False),  # running | stopped
    Column("status", String(16), nullable=False),  # starting running stopped failed
    Column("error", Text),
    Column("stats", Text),  # JSON counters
    Column("runner", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

migration("0801_stream_workers")(create_tables(stream_workers))
