"""Rollout tables: the persisted state machine, stage membership, decision log, controller lease.

Everything the controller knows lives here, so a hub killed mid-rollout resumes
where it was: the stage index and the stage's start time are columns, the
devices of the stage are rows, and every decision is an event with its numbers.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Float, Index, Integer, String, Table, Text

from cloud_hub.db import create_tables, metadata, migration

rollouts = Table(
    "rollouts", metadata,
    Column("id", String(64), primary_key=True),
    Column("model_name", String(256), nullable=False),
    Column("candidate_version", String(128), nullable=False),
    Column("candidate_digest", String(64), nullable=False),
    Column("champion_version", String(128), nullable=True),
    Column("champion_digest", String(64), nullable=True),
    Column("cohort", Text, nullable=False),
    Column("plan", JSON, nullable=False),
    # running | paused | rolling_back | rolled_back | completed | aborted
    Column("status", String(32), nullable=False),
    Column("stage_index", Integer, nullable=False, default=0),
    Column("stage_started_at", Float, nullable=False),
    Column("reason", Text, nullable=True),
    Column("last_evaluation", JSON, nullable=True),
    Column("baseline", JSON, nullable=True),  # champion aggregate kept for the 100 % stage
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Index("ix_rollouts_status", "status"),
    Index("ix_rollouts_model", "model_name"),
)

rollout_devices = Table(
    "rollout_devices", metadata,
    Column("rollout_id", String(64), primary_key=True),
    Column("device_id", String(128), primary_key=True),
    Column("bucket", Float, nullable=False),
    Column("target", String(16), nullable=False),  # shadow | candidate | champion (after rollback)
    Column("stage_index", Integer, nullable=False),  # stage where the device joined
    Column("desired_id", String(128), nullable=True),
    Column("assigned_at", Float, nullable=False),
)

rollout_events = Table(
    "rollout_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("stage", String(64), nullable=True),
    Column("message", Text, nullable=False),
    Column("data", JSON, nullable=True),
    Index("ix_rollout_events_rollout", "rollout_id", "id"),
)

controller_lease = Table(
    "rollout_controller_lease", metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", Float, nullable=False),
)

ALL = (rollouts, rollout_devices, rollout_events, controller_lease)

migration("0007_rollouts")(create_tables(*ALL))
