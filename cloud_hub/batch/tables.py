"""Job store: the ``batch_jobs`` table (SQLite or PostgreSQL, like the rest of the hub)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, String, Table, Text

from cloud_hub.db import create_tables, metadata, migration

batch_jobs = Table(
    "batch_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "status", String(16), nullable=False
    ),  # queued running succeeded failed cancelled interrupted
    Column("model_ref", String(300), nullable=False),
    Column("model_name", String(200)),
    Column("model_version", String(100)),
    Column("model_digest", String(64)),
    Column("engine", String(16), nullable=False),
    Column("input", Text, nullable=False),
    Column("output", Text, nullable=False),
    Column("rejects", Text),
    Column("spec", Text, nullable=False),  # JSON of BatchSpec
    Column("rows_total", BigInteger),
    Column("rows_done", BigInteger, nullable=False, default=0),
    Column("rows_out", BigInteger, nullable=False, default=0),
    Column("rows_rejected", BigInteger, nullable=False, default=0),
    Column("resumed_from_batch", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("error_code", String(64)),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("runner", String(64)),  # hub instance running it (several replicas share the DB)
    Column("created_by", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_batch_jobs_status", "status"),
    Index("ix_batch_jobs_created", "created_at"),
)

migration("0800_batch_jobs")(create_tables(batch_jobs))
