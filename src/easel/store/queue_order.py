"""The queue's order, cheap at any depth: the claim's pick and a queued task's position.

The claim order is: the key with the fewest running tasks first, then the oldest task (then
the id). Within one key every task has the same running count, so only each key's oldest
queued task can be first: the pick looks at the oldest few tasks of every (model, key) pair
that has queued work, found by a loose index scan over ``ix_tasks_queued`` (a recursive CTE
that jumps from one pair to the next with one index probe each), never at the whole queue.
A claim costs O(pairs · log n) for n queued tasks.

The position sums, pair by pair, the tasks ahead (all of a key with fewer running tasks;
the older ones of a key with as many), each pair's count stopping at ``POSITION_CAP`` and
the walk stopping once ``POSITION_CAP`` are counted: O(pairs · log n + POSITION_CAP).

The oldest queued task of some models (how long the worker's non-resident models have
waited: see :mod:`easel.worker.models`) is the oldest of each pair's oldest, one probe per
pair: O(pairs · log n).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    ARRAY,
    CTE,
    BigInteger,
    ColumnElement,
    FromClause,
    Select,
    String,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal,
    null,
    select,
    true,
    tuple_,
)

from easel.domain.tasks import POSITION_CAP, Status
from easel.store.tables import tasks

_QUEUED = Status.QUEUED.value
_PROBE = tasks.alias("probe")  # the loose scan's index probes
_PAIR = tasks.alias("pair")  # a pair's own tasks
_RUNNING = tasks.alias("running")


def running_of(api_key_id: Any) -> Any:
    """How many tasks of ``api_key_id`` are running (a scalar subquery)."""
    return (
        select(func.count())
        .select_from(_RUNNING)
        .where(_RUNNING.c.api_key_id == api_key_id, _RUNNING.c.status == Status.RUNNING.value)
        .scalar_subquery()
    )


def _pairs(name: str, models: bool, adding: Callable[[CTE], Any] | None = None) -> CTE:
    """The (model ``m``, key ``k``) pairs that have queued tasks (of the bound ``models``
    when ``models``), in index order, as a recursive CTE; also rows with ``k`` null, one
    before each model's first key, which the users of the CTE skip.

    With ``adding``, a column ``counted`` sums ``adding(pair)`` over the pairs before each
    row, and the walk stops once it reaches ``POSITION_CAP``."""
    queued = _PROBE.c.status == _QUEUED
    first_model = select(func.min(_PROBE.c.model_version)).where(queued)
    counted = (cast(literal(0), BigInteger).label("counted"),) if adding else ()
    start = select(
        cast(first_model.scalar_subquery(), String).label("m"),
        cast(null(), String).label("k"),
        *counted,
    ).cte(name, recursive=True)
    # Every model with queued tasks is visited (the catalog is short), but only those in
    # ``models`` have their keys walked: a probe for the next model in a list would walk
    # the index over the queued tasks of the models between, on PostgreSQL.
    next_key: Any = (
        select(func.min(_PROBE.c.api_key_id))
        .where(
            queued,
            _PROBE.c.model_version == start.c.m,
            _PROBE.c.api_key_id > func.coalesce(start.c.k, ""),
        )
        .scalar_subquery()
    )
    if models:
        next_key = case((start.c.m.in_(bindparam("models", expanding=True)), next_key))
    next_model = (
        select(func.min(_PROBE.c.model_version))
        .where(queued, _PROBE.c.model_version > start.c.m)
        .scalar_subquery()
    )
    step = select(
        case((next_key.is_(None), cast(next_model, String)), else_=start.c.m),
        cast(next_key, String),
    ).where(start.c.m.is_not(None))
    if adding:
        step = step.add_columns(cast(start.c.counted + adding(start), BigInteger)).where(
            start.c.counted < POSITION_CAP
        )
    return start.union_all(step)


def _of_pair(pairs: FromClause) -> ColumnElement[bool]:
    return and_(
        _PAIR.c.status == _QUEUED,
        _PAIR.c.model_version == pairs.c.m,
        _PAIR.c.api_key_id == pairs.c.k,
    )


def pick(lateral: bool) -> Select[Any]:
    """The id of the task to claim next among the queued tasks of the bound ``models``,
    locked (SKIP LOCKED on PostgreSQL): the first in the claim order among the oldest
    tasks of each (model, key) pair.

    ``lateral`` False: SQLite's form, the oldest task of each pair (claims are serialised:
    nothing is ever skipped). True: PostgreSQL's, through LATERAL joins: the bound
    ``per_pair`` oldest tasks (None: all) of the ``pairs_considered`` pairs whose oldest
    task comes first (None: all pairs), so that concurrent claimers, each skipping the tasks
    the others are taking, still find one.
    """
    pairs = _pairs("claim_pairs", True)
    chosen = tasks.alias("chosen")
    if not lateral:
        oldest = (
            select(_PAIR.c.id)
            .where(_of_pair(pairs))
            .order_by(_PAIR.c.created_at, _PAIR.c.id)
            .limit(1)
            .scalar_subquery()
        )
        heads = select(oldest.label("id")).where(pairs.c.k.is_not(None)).subquery()
        joined: FromClause = heads.join(chosen, chosen.c.id == heads.c.id)
        picked = chosen.c.status == _QUEUED
    else:
        first = _PAIR.alias("first")
        head = (
            select(first.c.created_at, first.c.id)
            .where(
                first.c.status == _QUEUED,
                first.c.model_version == pairs.c.m,
                first.c.api_key_id == pairs.c.k,
            )
            .order_by(first.c.created_at, first.c.id)
            .limit(1)
            .lateral("oldest_of_pair")
        )
        # The bound ``pairs_considered`` pairs whose oldest task comes first (None: all).
        ranked = (
            select(pairs.c.m, pairs.c.k)
            .select_from(pairs.join(head, true()))
            .order_by(running_of(pairs.c.k), head.c.created_at, head.c.id)
            .limit(bindparam("pairs_considered"))
            .subquery("ranked")
        )
        oldest_few = (
            select(_PAIR.c.id)
            .where(_of_pair(ranked))
            .order_by(_PAIR.c.created_at, _PAIR.c.id)
            .limit(bindparam("per_pair"))
            .lateral("candidates")
        )
        # The candidates' ids gathered first (an array: evaluated once), then their rows read
        # by primary key: however the planner misjudges the queue (statistics from before a
        # surge say few tasks are queued), never a walk of the queue for each queued task.
        candidates = select(oldest_few.c.id).select_from(ranked.join(oldest_few, true()))
        ids = func.array(candidates.scalar_subquery(), type_=ARRAY(String))
        joined = chosen
        # The status is checked again under the row lock (a candidate another claimer took
        # meanwhile), as an expression that no index serves: with ``status = 'queued'`` the
        # planner would read every queued task through ix_tasks_queued whenever statistics
        # from before a surge say that few are queued.
        picked = and_(chosen.c.id == any_(ids), chosen.c.status.concat("") == _QUEUED)
    return (
        select(chosen.c.id)
        .select_from(joined)
        .where(picked)
        .order_by(running_of(chosen.c.api_key_id), chosen.c.created_at, chosen.c.id)
        .limit(1)
        .with_for_update(of=chosen, skip_locked=True)
    )


def _oldest() -> Select[Any]:
    """The creation time of the oldest queued task of the bound ``models`` (None: none)."""
    pairs = _pairs("oldest_pairs", True)
    oldest = select(func.min(_PAIR.c.created_at)).where(_of_pair(pairs)).scalar_subquery()
    heads = select(oldest.label("created_at")).where(pairs.c.k.is_not(None)).subquery()
    return select(func.min(heads.c.created_at))


OLDEST = _oldest()


def _capped_count(pairs: CTE, *where: ColumnElement[bool]) -> Any:
    """How many queued tasks of the pair (matching ``where``), counting at most the cap."""
    some = (
        select(literal(1).label("one"))
        .where(_of_pair(pairs), *where)
        .limit(POSITION_CAP)
        .correlate(pairs)
    )
    return select(func.count()).select_from(some.subquery()).scalar_subquery()


def _ahead_in_pair(walk: CTE) -> Any:
    """The tasks of the walk's current pair that go before the bound task."""
    theirs = running_of(walk.c.k)
    ours = running_of(bindparam("key_id"))
    older = and_(
        _PAIR.c.created_at <= bindparam("created_at"),
        tuple_(_PAIR.c.created_at, _PAIR.c.id)
        < tuple_(bindparam("created_at"), bindparam("task_id")),
    )
    return case(
        (walk.c.k.is_(None), 0),
        (theirs < ours, _capped_count(walk)),
        (theirs == ours, _capped_count(walk, older)),
        else_=0,
    )


def _position() -> Select[Any]:
    walk = _pairs("ahead", False, _ahead_in_pair)
    return select(func.max(walk.c.counted))


AHEAD = _position()
