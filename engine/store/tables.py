"""SQLModel table classes: the only place with `table=True`.

The unique constraints here carry the guarantees of DESIGN section 3 (one enrollment per playbook,
customer and occurrence; one action per idempotency key; exactly-once points and tasks), and the
indexes are the ones evaluation needs (events by customer/type/time, customers by each fact a
trigger selects on). Times are stored as UTC; `UTCDateTime` hands back aware datetimes.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from engine.clock import aware_utc


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; naive input means UTC (DESIGN section 5)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = aware_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return aware_utc(value)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def _time(**kwargs: Any) -> Any:
    return Field(default=None, sa_type=UTCDateTime, **kwargs)


def _json(default_factory: Any) -> Any:
    return Field(default_factory=default_factory, sa_type=JSONType)


FACTS_INDEXED = ("last_active_at", "created_at", "purchase_count", "total_spent", "segment",
                 "rfm_segment", "customer_id")
"""The columns of `ix_customers_facts` (migration 0006), last_active_at first: a playbook that
reads only these is evaluated by SQLite from that index alone, a third of the row's width, and
the inactive trigger's range lookups still find it (docs/EVALUATION.md)."""


class Customer(SQLModel, table=True):
    """A customer's own columns plus the derived facts that sync keeps up to date."""

    __tablename__ = "customers"
    __table_args__ = (sa.Index("ix_customers_facts", *FACTS_INDEXED),)

    customer_id: str = Field(primary_key=True)
    email: str | None = Field(default=None, index=True)
    name: str | None = None
    created_at: datetime | None = _time()
    birthday: date | None = None
    timezone: str | None = Field(default=None, index=True)  # date triggers walk the zones
    country: str | None = None
    segment: str | None = None
    tags: list[str] = _json(list)  # what conditions see: (file_tags | tags_added) - tags_removed
    file_tags: list[str] = _json(list)  # as the customer file brought them (sync replaces them)
    tags_added: list[str] = _json(list)  # by `tag` actions; a sync never touches these two
    tags_removed: list[str] = _json(list)
    attributes: dict[str, Any] = _json(dict)
    first_synced_at: datetime | None = _time()
    # Derived facts (engine/store/facts.py); never written from a customer file.
    last_active_at: datetime | None = _time()  # first column of ix_customers_facts
    first_purchase_at: datetime | None = _time(index=True)
    last_purchase_at: datetime | None = _time()
    purchase_count: int = 0
    total_spent: float = 0.0
    last_feedback_score: float | None = None
    last_feedback_at: datetime | None = _time()
    points_balance: int = 0
    last_emailed_at: datetime | None = _time()
    rfm_score: str | None = None
    rfm_segment: str | None = None
    # R, F and M as the ranking that gave rfm_score ordered them (engine/sync/rfm.py; M is
    # `revenue_key(total_spent)`): a customer whose facts differ has moved since. NULL, 0, 0
    # for a customer without a purchase then.
    rfm_last_purchase_at: datetime | None = _time()
    rfm_purchase_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    rfm_revenue: float = Field(default=0.0, sa_type=sa.Numeric(asdecimal=False),
                               sa_column_kwargs={"server_default": "0"})


class Event(SQLModel, table=True):
    """Something a customer did (or the engine did to them); unique by the source's event id.

    `amount` and `score` are copied out of `properties` into typed columns because the derived
    facts and most conditions aggregate them; everything else stays in `properties`.
    """

    __tablename__ = "events"
    __table_args__ = (
        sa.Index("ix_events_customer_type_time", "customer_id", "type", "occurred_at"),
        sa.Index("ix_events_type_time", "type", "occurred_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True)
    customer_id: str = Field(foreign_key="customers.customer_id")
    type: str
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    amount: float | None = None
    score: float | None = None
    properties: dict[str, Any] = _json(dict)


class PlaybookVersion(SQLModel, table=True):
    """Every distinct content of a playbook file, keyed by its content hash."""

    __tablename__ = "playbook_versions"
    __table_args__ = (sa.UniqueConstraint("playbook_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    playbook_id: str = Field(index=True)
    version: str
    source: str
    templates: dict[str, str] = _json(dict)  # templates/NAME -> its text, as the version used it
    enabled_at: datetime | None = _time()
    created_at: datetime | None = _time()


class Enrollment(SQLModel, table=True):
    """A customer's passage through one playbook for one occurrence of its trigger."""

    __tablename__ = "enrollments"
    __table_args__ = (
        sa.UniqueConstraint("playbook_id", "customer_id", "occurrence_key"),
        sa.Index("ix_enrollments_status_wake", "status", "wake_at"),
        # At most one open segment membership per (playbook, customer), whoever evaluates:
        # two replicas planning the same edge at different as-of times get different
        # occurrence keys, so only this index stops the second enrollment (issue 13).
        sa.Index("uq_enrollments_open_membership", "playbook_id", "customer_id", unique=True,
                 sqlite_where=sa.text("membership AND left_at IS NULL"),
                 postgresql_where=sa.text("membership AND left_at IS NULL")),
    )

    id: int | None = Field(default=None, primary_key=True)
    playbook_id: str
    version: str
    customer_id: str = Field(foreign_key="customers.customer_id", index=True)
    occurrence_key: str
    event_id: str | None = None  # the triggering event, when the trigger is an event
    step: int = 0
    wake_at: datetime | None = _time()
    holdout: bool = False
    status: str = "active"
    entered_at: datetime = Field(sa_type=UTCDateTime)
    ended_at: datetime | None = _time()
    end_reason: str | None = None
    # For `segment` triggers: when the customer stopped matching `when` (NULL: still in the
    # segment). The edge trigger enters only customers with no open membership.
    left_at: datetime | None = _time()
    # True for a `segment` trigger's enrollment: it is a membership, open while left_at is NULL.
    membership: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    converted_at: datetime | None = _time()  # the goal event's time, within the goal window


class Action(SQLModel, table=True):
    """The outbox: one planned action, delivered by the dispatcher at least once.

    `status` is one word of engine/store/status.py; `next_attempt_at` is business time (as-of),
    `lease_until` real time. The payload lives in `action_payloads`: a status update then
    rewrites a small row, not a rendered email (SQLite writes the whole record on update).
    """

    __tablename__ = "actions"
    __table_args__ = (sa.Index("ix_actions_status_next", "status", "next_attempt_at"),
                      sa.Index("ix_actions_customer_connector", "customer_id", "connector"))

    id: int | None = Field(default=None, primary_key=True)
    enrollment_id: int | None = Field(default=None, foreign_key="enrollments.id", index=True)
    playbook_id: str = Field(index=True)
    customer_id: str
    stage: int = 0
    step: int = 0
    connector: str
    idempotency_key: str = Field(unique=True)
    status: str = "planned"
    reason: str | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = _time()
    lease_until: datetime | None = _time()
    leased_by: str | None = None
    last_error: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime | None = _time()
    sent_at: datetime | None = _time()  # business time of the delivery


class ActionPayload(SQLModel, table=True):
    """An outbox row's payload, frozen at commit (`Connector.payload`): written once with its
    action and only read afterwards (the claim), so a re-send is the same message.

    Kept apart from `actions` because SQLite rewrites a whole record on every UPDATE: with a
    6 KB email inside, each claim and each recorded outcome copied it (docs/BENCHMARKS.md).
    """

    __tablename__ = "action_payloads"

    action_id: int = Field(primary_key=True, foreign_key="actions.id")
    payload: dict[str, Any] = _json(dict)


class ActionAttempt(SQLModel, table=True):
    """One try at delivering an action, kept for `retain outbox show` and the on-call person."""

    __tablename__ = "action_attempts"

    id: int | None = Field(default=None, primary_key=True)
    action_id: int = Field(foreign_key="actions.id", index=True)
    attempt: int
    worker: str | None = None
    started_at: datetime = Field(sa_type=UTCDateTime)  # real clock
    finished_at: datetime | None = _time()
    outcome: str  # a status word: sent, retrying, dead, suppressed, ...
    error: str | None = None


class Task(SQLModel, table=True):
    """A follow-up task for a person; exactly once per idempotency key."""

    __tablename__ = "tasks"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(unique=True)
    customer_id: str = Field(index=True)
    playbook_id: str | None = None
    title: str
    assignee: str | None = None
    note: str | None = None
    due_at: datetime | None = _time()
    status: str = "open"
    created_at: datetime = Field(sa_type=UTCDateTime)
    done_at: datetime | None = _time()


class PointsEntry(SQLModel, table=True):
    """One line of the loyalty ledger; exactly once per idempotency key."""

    __tablename__ = "points_ledger"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(unique=True)
    customer_id: str = Field(index=True)
    playbook_id: str | None = None
    amount: int
    reason: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime)


class Suppression(SQLModel, table=True):
    """An address that gets no email (unsubscribed, bounced); stored lower-cased."""

    __tablename__ = "suppressions"

    email: str = Field(primary_key=True)
    reason: str
    created_at: datetime = Field(sa_type=UTCDateTime)


class Secret(SQLModel, table=True):
    """A key the engine made for itself (the unsubscribe signing key when RETAIN_SECRET_KEY is
    unset), kept so links survive restarts and work across replicas."""

    __tablename__ = "engine_secrets"

    name: str = Field(primary_key=True)
    value: str
    created_at: datetime = Field(sa_type=UTCDateTime)


class DaemonLeader(SQLModel, table=True):
    """A leader lease (engine/daemon/leader.py): who schedules, until when, at which epoch.

    `epoch` grows by one at every change of holder, so a deposed leader's late write is told
    apart from the new leader's (the fence compares it inside the writing transaction).
    `lease_until` is real time (engine.clock.utcnow), never the business as-of."""

    __tablename__ = "daemon_leader"

    name: str = Field(primary_key=True)
    holder: str
    epoch: int
    lease_until: datetime = Field(sa_type=UTCDateTime)


class ScheduleTick(SQLModel, table=True):
    """A schedule tick taken by one replica: the unique key makes a tick run once however many
    replicas see it due (engine/daemon/schedule.py)."""

    __tablename__ = "schedule_ticks"
    __table_args__ = (sa.UniqueConstraint("playbook_id", "tick"),)

    id: int | None = Field(default=None, primary_key=True)
    playbook_id: str
    tick: datetime = Field(sa_type=UTCDateTime)
    holder: str
    epoch: int
    ran_at: datetime = Field(sa_type=UTCDateTime)


class RfmRanking(SQLModel, table=True):
    """The last RFM ranking, one row (id 1): how many customers it ranked and, per dimension,
    the customers that open score buckets 2 to 5, so that the next ranking can start from it
    (engine/sync/rfm.py). `bounds` is NULL when there is none to start from (never ranked, or
    a ranking in small steps is under way); `generation` counts rankings."""

    __tablename__ = "rfm_ranking"

    id: int = Field(primary_key=True)
    ranked: int = 0
    generation: int = 0
    bounds: dict[str, Any] | None = Field(default=None, sa_type=JSONType)


class SyncCursor(SQLModel, table=True):
    """How far a sync source has been read, so a re-sync can resume."""

    __tablename__ = "sync_cursors"

    source: str = Field(primary_key=True)
    position: str
    updated_at: datetime = Field(sa_type=UTCDateTime)


def _core(model: type[SQLModel]) -> sa.Table:
    return model.__table__  # type: ignore[attr-defined,no-any-return]


# The tables as SQLAlchemy Core handles, the one name each that queries use.
customers = _core(Customer)
events = _core(Event)
versions = _core(PlaybookVersion)
enrollments = _core(Enrollment)
actions = _core(Action)
payloads = _core(ActionPayload)
attempts = _core(ActionAttempt)
secrets = _core(Secret)
tasks = _core(Task)
points = _core(PointsEntry)
suppressions = _core(Suppression)
leaders = _core(DaemonLeader)
ticks = _core(ScheduleTick)
rankings = _core(RfmRanking)


def revenue(column: sa.ColumnElement[float]) -> sa.ColumnElement[Any]:
    """M's key (engine/store/facts.py `revenue_key`): rounded to 4 decimals. CAST AS NUMERIC
    keeps a SQLite REAL's value, so one spelling serves both databases (PostgreSQL rounds only
    numeric). The 4 is written into the SQL: SQLite matches an index's WHERE to a query's by
    their terms, and a bound parameter matches no constant."""
    return sa.func.round(sa.cast(column, sa.Numeric), sa.literal_column("4", sa.Integer))


def _rfm_indexes() -> dict[str, sa.ColumnElement[Any]]:
    """RFM's keys as ranked, each with its index (key, customer_id in byte order: COLLATE "C"
    on PostgreSQL, SQLite's BINARY as it is) over the ranked customers, and the partial index
    of the customers who moved since."""
    c = customers.c
    keys: dict[str, sa.ColumnElement[Any]] = {
        "r": c.rfm_last_purchase_at, "f": c.rfm_purchase_count, "m": c.rfm_revenue}
    for name, key in keys.items():
        ranked = RFM_RANKED_BY[name]
        sa.Index(f"ix_customers_rfm_{name}", key, c.customer_id,
                 postgresql_ops={"customer_id": 'COLLATE "C"'},
                 sqlite_where=ranked, postgresql_where=ranked)
    sa.Index("ix_customers_rfm_moved", c.customer_id, sqlite_where=RFM_MOVED,
             postgresql_where=RFM_MOVED)
    return keys


RFM_RANKED_BY: dict[str, sa.ColumnElement[bool]] = {
    "r": customers.c.rfm_purchase_count > sa.literal_column("0", sa.Integer),
    "f": customers.c.rfm_last_purchase_at.is_not(None),
}
RFM_RANKED_BY["m"] = RFM_RANKED_BY["r"]
"""A customer the last RFM ranking ranked (one with a purchase then), spelled per index: the
same customers, but SQLite takes a term on an index's own key (`rfm_purchase_count > 0` for
F) as the range it seeks, instead of the key and customer_id it is asked for."""
RFM_MOVED: sa.ColumnElement[bool] = sa.or_(
    customers.c.purchase_count.is_distinct_from(customers.c.rfm_purchase_count),
    customers.c.last_purchase_at.is_distinct_from(customers.c.rfm_last_purchase_at),
    revenue(customers.c.total_spent).is_distinct_from(customers.c.rfm_revenue))
"""A customer whose R, F or M differ from the values their RFM scores ranked: spelled once,
for the partial index and the queries that use it (SQLite matches the two by their terms)."""
RFM_KEYS = _rfm_indexes()
"""R, F and M as ranked, as their indexes order them (then customer_id in byte order)."""
