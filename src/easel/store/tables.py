"""The database schema (SQLAlchemy Core). Alembic migrations must match it; a test checks.

Times are unix seconds as floats, written by the application, so SQLite and PostgreSQL
behave alike.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("balance", BigInteger, nullable=False),
    Column("frozen", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    # The account's last event number: bumping it locks the row, so its events commit in
    # order and a reader resuming after event N misses nothing.
    Column("event_seq", BigInteger, nullable=False, server_default="0"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", String(36), ForeignKey("accounts.id"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

# Every credit move. For each account: sum(balance_delta) == balance and
# sum(frozen_delta) == frozen, always.
ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(36), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("task_id", String(36)),
    Column("kind", String(16), nullable=False),  # grant | hold | settle | refund
    Column("balance_delta", BigInteger, nullable=False),
    Column("frozen_delta", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", String(36), ForeignKey("accounts.id"), nullable=False),
    Column("api_key_id", String(36), ForeignKey("api_keys.id"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("input", JSON, nullable=False),  # the accepted request, echoed to the client
    Column("prompt", Text, nullable=False),  # the composed prompt the backend receives
    Column("refs", JSON, nullable=False),  # resolved references, in image[N] order
    Column("price", Integer, nullable=False),
    Column("consumed_credit", Integer, nullable=False, default=0),
    Column("progress", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("worker_id", String(64)),
    Column("lease_until", Float),
    Column("cancel_requested_at", Float),  # a running task stops at its next checkpoint
    Column("backend", String(64)),
    Column("output_key", String(512)),  # the image (a multiview task's: its front view)
    Column("output_views", JSON),  # a multiview task's {view: key}, front view included
    Column("output_deleted_at", Float),  # the output passed its retention and was deleted
    Column("error_code", Integer),
    Column("error_msg", Text),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Index("ix_tasks_queue", "status", "created_at"),
    # The claim and the queue position walk the queue pair by pair (model, key), oldest
    # first within a pair: see easel.store.queue_order.
    Index("ix_tasks_queued", "status", "model_version", "api_key_id", "created_at", "id"),
    Index("ix_tasks_key_status", "api_key_id", "status"),
    Index("ix_tasks_key_created", "api_key_id", "created_at"),
    Index("ix_tasks_model_finished", "model_version", "status", "finished_at"),
)

# Every change of a task, numbered per account (gap-free, committed in order).
events = Table(
    "events",
    metadata,
    Column("account_id", String(36), ForeignKey("accounts.id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("api_key_id", String(36), nullable=False),
    Column("task_id", String(36), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("progress", Integer, nullable=False),
    Column("created_at", Float, nullable=False, index=True),  # the janitor prunes by age
)

# One row per backend run of a task: which backend, when, and how it ended.
attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(36), ForeignKey("tasks.id"), nullable=False, index=True),
    Column("claim", Integer, nullable=False),  # the task's attempts counter at the time
    Column("backend", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("outcome", String(16)),  # success | retryable | failed | rejected | skipped | lost
    Column("error", Text),
    # what makes the image: the kind and the provider's model, or the local pipeline and weights
    Column("served_by", String(300)),
)

files = Table(
    "files",
    metadata,
    Column("token", String(36), primary_key=True),
    Column("account_id", String(36), ForeignKey("accounts.id"), nullable=False),
    Column("key", String(512), nullable=False, unique=True),
    Column("format", String(8), nullable=False),
    Column("size", Integer, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Idempotency-Key of POST /task: the first answer (its task) replayed for 24 h.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("api_key_id", String(36), ForeignKey("api_keys.id"), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("body_hash", String(64), nullable=False),
    Column("task_id", String(36), nullable=False),
    Column("created_at", Float, nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("models", JSON, nullable=False),
    Column("slots", Integer, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    # What it advertises with each heartbeat: the models it has resident (a task starts
    # painting at once; null, from a worker older than the column: all of them) and how
    # long swapping each in took, {model_version: seconds}.
    Column("resident", JSON),
    Column("load_s", JSON),
)

secrets = Table(
    "secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(128), nullable=False),
)

# Webhooks: a key's URL and event filter; the secret signs every delivery (Standard Webhooks).
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", String(36), ForeignKey("accounts.id"), nullable=False),
    Column("api_key_id", String(36), ForeignKey("api_keys.id"), nullable=False, index=True),
    Column("url", Text, nullable=False),
    Column("events", JSON, nullable=False),  # e.g. ["task.success", "task.failed"]
    Column("secret", String(64), nullable=False),  # whsec_<base64>
    Column("base_url", String(512), nullable=False),  # for output URLs when public_url is unset
    Column("created_at", Float, nullable=False),
)

# The outbox: one row per (event, matching webhook), written in the event's transaction.
# A dispatcher claims a due row by pushing next_attempt_at out by its lease and setting
# claim_token; it records the attempt only while the token is still its own.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(36), primary_key=True),  # msg_…, the webhook-id header
    Column("webhook_id", String(36), ForeignKey("webhooks.id"), nullable=False),
    Column("task_id", String(36), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("progress", Integer, nullable=False),  # the event's progress
    Column("status", String(16), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False),  # attempts made, ever
    Column("window_start", Float),  # first attempt of the current retry window
    Column("window_attempts", Integer, nullable=False),  # attempts in the current window
    Column("next_attempt_at", Float),  # due time (or lease end while claimed); None when done
    Column("claim_token", String(32)),
    Column("created_at", Float, nullable=False),  # the event's time
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_log", "webhook_id", "created_at"),
)

# One row per delivery attempt: the delivery log.
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "delivery_id",
        String(36),
        ForeignKey("webhook_deliveries.id"),
        nullable=False,
        index=True,
    ),
    Column("number", Integer, nullable=False),
    Column("status_code", Integer),  # None when no answer came
    Column("latency_ms", Float, nullable=False),
    Column("error", Text),
    Column("created_at", Float, nullable=False),
)
