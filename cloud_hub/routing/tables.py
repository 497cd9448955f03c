"""Tables of champion/challenger routing (migration ``0005_routing``).

``routing_splits`` holds one split per model name; the hash salt is
``"{name}:{split_id}"`` so a split survives restarts and is the same in every
replica. ``routing_predictions`` is the per-row prediction log that feedback is
joined to; ``routing_feedback`` holds true outcomes that arrive later.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, DateTime, Float, Index, Integer, String, Table

from cloud_hub.db import create_tables, metadata, migration

routing_splits = Table(
    "routing_splits", metadata,
    Column("name", String(200), primary_key=True),
    Column("split_id", String(64), nullable=False),
    Column("challenger_fraction", Float, nullable=False),
    Column("entity_key", String(200), nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("evaluation", JSON, nullable=False, default=dict),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("history", JSON, nullable=False, default=list),
)

routing_predictions = Table(
    "routing_predictions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),  # clients may reuse X-Request-ID: not unique
    Column("row", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("split_id", String(64), nullable=False),
    Column("grp", String(16), nullable=False),
    Column("version", String(200), nullable=False),
    Column("entity_key", String(200), nullable=True),
    Column("score", Float, nullable=True),
    Column("decision", String(200), nullable=True),
    Column("positive", Boolean, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("error", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_routing_predictions_name_split", routing_predictions.c.name, routing_predictions.c.split_id)
Index("ix_routing_predictions_entity", routing_predictions.c.name, routing_predictions.c.entity_key)
Index("ix_routing_predictions_request", routing_predictions.c.request_id)

routing_feedback = Table(
    "routing_feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("row", Integer, nullable=True),
    Column("entity_key", String(200), nullable=True),
    Column("outcome", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_routing_feedback_name", routing_feedback.c.name)

migration("0005_routing")(create_tables(routing_splits, routing_predictions, routing_feedback))


@migration("0006_routing_widen")
def _widen(conn) -> None:
    """Log columns as wide as what they hold: request ids up to 128 characters (X-Request-ID),
    versions up to 200 (the registry's limit), labels up to 200. A narrower column made
    PostgreSQL refuse the row, and the prediction was answered but not logged."""
    if conn.dialect.name != "postgresql":
        return  # SQLite does not enforce VARCHAR lengths
    from sqlalchemy import text

    for table, col, n in (("routing_predictions", "request_id", 128), ("routing_predictions", "version", 200),
                          ("routing_predictions", "decision", 200), ("routing_feedback", "request_id", 128)):
        conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {col} TYPE VARCHAR({n})"))
