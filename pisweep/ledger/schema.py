"""The ledger's tables (SQLAlchemy Core). Every change goes through a migration in migrations.py."""
from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

meta = Table("meta", metadata, Column("key", String, primary_key=True), Column("value", Text, nullable=False))

studies = Table(
    "studies", metadata,
    Column("name", String, primary_key=True),
    Column("spec_json", Text, nullable=False),  # the validated study, paths absolute
    Column("spec_hash", String, nullable=False),  # hash of the result-affecting part
    Column("spec_path", Text),
    Column("identity_version", Integer, nullable=False, server_default="1"),  # the uids' version (study/identity.py)
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# One row per job of the plan: a stage-1 init ("init"), a stage-2 run ("train") or a post-hoc fine-tune of a run
# ("posthoc"; its init_uid is its source run).
jobs = Table(
    "jobs", metadata,
    Column("uid", String, primary_key=True),
    Column("study", String, ForeignKey("studies.name"), nullable=False),
    Column("kind", String, nullable=False),
    Column("label", String, nullable=False),
    Column("init", String), Column("init_uid", String), Column("scale", String),
    Column("epochs", Integer), Column("seed", Integer),
    Column("folder", Text, nullable=False),
    Column("identity_json", Text, nullable=False),
    Column("state", String, nullable=False),  # planned|queued|running|completed|preempted|stopped|timeout|failed|...
    Column("reason", Text),
    Column("epoch_reached", Integer, nullable=False, default=0),
    Column("step_reached", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("timeouts", Integer, nullable=False, default=0),
    Column("no_retry", Integer, nullable=False, default=0),  # its last attempt failed in a way that repeats
    Column("executor", String), Column("scheduler_id", String),
    Column("log_path", Text),
    Column("updated_at", Float, nullable=False),
)
Index("jobs_study", jobs.c.study, jobs.c.kind)

attempts = Table(
    "attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_uid", String, ForeignKey("jobs.uid"), nullable=False),
    Column("job_id", String, nullable=False),
    Column("restart", Integer, nullable=False),
    Column("executor", String), Column("host", String), Column("world_size", Integer),
    Column("started_at", Float), Column("ended_at", Float),
    Column("outcome", String),  # None while running
    Column("reason", Text),
    Column("step", Integer), Column("epoch", Integer),
    UniqueConstraint("job_uid", "job_id", "restart"),
)

checkpoints = Table(
    "checkpoints", metadata,
    Column("job_uid", String, ForeignKey("jobs.uid"), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("kind", String, nullable=False),  # weights | resume | init
    Column("path", Text, nullable=False), Column("sha256", String), Column("bytes", Integer),
    Column("step", Integer), Column("created_at", Float),
    PrimaryKeyConstraint("job_uid", "epoch", "kind"),
)

# One row per (checkpoint, task, suite version): the eval's own state.
evals = Table(
    "evals", metadata,
    Column("job_uid", String, ForeignKey("jobs.uid"), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("task", String, nullable=False),
    Column("suite_version", String, nullable=False),
    Column("state", String, nullable=False),  # queued|running|done|failed|missing_data
    Column("reason", Text), Column("path", Text),
    Column("main_metric", String), Column("main_value", Float),
    Column("updated_at", Float, nullable=False),
    Column("scheduler_id", String),  # the SLURM job submitted to run it (kept when it runs and ends)
    PrimaryKeyConstraint("job_uid", "epoch", "task", "suite_version"),
)

metrics = Table(
    "metrics", metadata,
    Column("job_uid", String, ForeignKey("jobs.uid"), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("task", String, nullable=False),  # a benchmark key, "train", or "nights/<subset>"
    Column("metric", String, nullable=False),
    Column("suite_version", String, nullable=False),
    Column("value", Float),
    PrimaryKeyConstraint("job_uid", "epoch", "task", "metric", "suite_version"),
)

events_seen = Table("events_seen", metadata, Column("job_uid", String, nullable=False),
                    Column("name", String, nullable=False), PrimaryKeyConstraint("job_uid", "name"))
