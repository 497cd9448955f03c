"""Tables of shadow deployments (migration ``0006_shadow``).

``shadow_targets``: shadow versions attached to a model name (and their
segment fields / sample rate). ``shadow_comparisons``: one row per mirrored
request row, written in batches by the shadow worker.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, DateTime, Float, Index, Integer, String, Table

from cloud_hub.db import create_tables, metadata, migration

shadow_targets = Table(
    "shadow_targets", metadata,
    Column("name", String(200), primary_key=True),
    Column("version", String(100), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("sample_rate", Float, nullable=False, default=1.0),
    Column("segments", JSON, nullable=False, default=list),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

shadow_comparisons = Table(
    "shadow_comparisons", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False),
    Column("row", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("primary_version", String(100), nullable=False),
    Column("shadow_version", String(100), nullable=False),
    Column("primary_score", Float, nullable=True),
    Column("shadow_score", Float, nullable=True),
    Column("divergence", Float, nullable=True),
    Column("primary_decision", String(100), nullable=True),
    Column("shadow_decision", String(100), nullable=True),
    Column("decision_changed", Boolean, nullable=False, default=False),
    Column("primary_bucket", String(64), nullable=True),
    Column("shadow_bucket", String(64), nullable=True),
    Column("primary_latency_ms", Float, nullable=True),
    Column("shadow_latency_ms", Float, nullable=True),
    Column("shadow_error", String(300), nullable=True),
    Column("segment", JSON, nullable=False, default=dict),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_shadow_comparisons_name", shadow_comparisons.c.name, shadow_comparisons.c.shadow_version)

migration("0006_shadow")(create_tables(shadow_targets, shadow_comparisons))
