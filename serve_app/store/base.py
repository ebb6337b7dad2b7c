"""The job store behind one interface: job records, Idempotency-Keys, and the queue with its leases.

Every statement is written once, here, in the SQL that SQLite and PostgreSQL both speak (`?` parameters, which
a subclass may translate); a subclass gives its connections and whether a transaction can lock the rows it reads
(`FOR UPDATE [SKIP LOCKED]`, PostgreSQL) or holds the whole database (SQLite's `BEGIN IMMEDIATE`).

A job is its JSON (the `Job` model, the one truth) plus columns copied from it for queries (status, owner, model,
runs, times), rewritten on every write, and the queue's own columns: who claimed it last (`lease_owner`), until
when that claim holds unless renewed (`lease_expires_at`), and whether a client asked to cancel it while it ran
(`cancel_requested`).

The queue: a `queued` job is claimed atomically by one runner (any ingress replica), which starts its next run
in the same transaction. The order (QUEUE_ORDER): re-runs of cut-off jobs first (a preempted job is no re-run:
it waits in its class); then higher priority classes; then, within a class, fair sharing between API keys
(weighted fair queuing: each job's start tag is what its key has running in that class plus what it queued
before this job, in estimated GPU-seconds over the key's weight, and the smallest tag goes first); then jobs of a
model the gangs hold (those of the running jobs, and of the job started last) so that weight swaps stay rare,
unless a job has waited longer than the grouping delay; oldest first.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, NamedTuple

from serve_app.schemas import Attempt, ErrorCode, Job, JobStatus

TERMINAL = tuple(status for status in JobStatus if status.is_terminal)
QUEUED, IN_PROGRESS = JobStatus.QUEUED.value, JobStatus.IN_PROGRESS.value

# Columns beside id, status, created_at and data. DOUBLE PRECISION: PostgreSQL's REAL would round unix times.
COLUMNS = {
    "owner": "TEXT",
    "model": "TEXT",
    "runs": "INTEGER NOT NULL DEFAULT 0",
    "completed_at": "DOUBLE PRECISION",
    "claimed_at": "DOUBLE PRECISION",
    "lease_owner": "TEXT",
    "lease_expires_at": "DOUBLE PRECISION",
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
    "priority": "INTEGER NOT NULL DEFAULT 1",  # the class's rank (Priority.rank): 0 goes first
    "charge": "DOUBLE PRECISION NOT NULL DEFAULT 0",  # what fair sharing charges the job: GPU-seconds / weight
    "cost": "DOUBLE PRECISION NOT NULL DEFAULT 0",  # its estimated GPU-seconds (for the wait of those behind it)
}
TABLES = (
    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at DOUBLE PRECISION NOT "
    f"NULL, data TEXT NOT NULL, {', '.join(f'{name} {kind}' for name, kind in COLUMNS.items())})",
    "CREATE TABLE IF NOT EXISTS idempotency_keys (owner TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT "
    "NULL, job_id TEXT, PRIMARY KEY (owner, key))",
)
INDEXES = (
    "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_claimed ON jobs (claimed_at)",
    "CREATE INDEX IF NOT EXISTS jobs_lease_owner ON jobs (lease_owner)",
)

# The models the gangs hold: those of the running jobs, and of the job started last (its gang kept it).
HELD_MODELS = (f"SELECT model FROM jobs WHERE status = '{IN_PROGRESS}' UNION SELECT model FROM (SELECT model FROM "
               "jobs WHERE claimed_at IS NOT NULL ORDER BY claimed_at DESC LIMIT 1) AS started_last")
# The queued jobs with their sort keys: re-run or not; class; fair-sharing start tag (the charge its owner has
# running in the class, plus that of the owner's jobs queued before it in the class); held model, or waited past
# the grouping delay (the `?`: the creation time before which they did). Taking the first by QUEUE_ORDER is the
# policy: within a class and a tie of tags, the oldest job of a held model, unless the oldest of all waited past
# the delay.
RERUN_KEY = "CASE WHEN runs > 0 THEN 0 ELSE 1 END"
GROUP_KEY = f"CASE WHEN model IN ({HELD_MODELS}) OR created_at < ? THEN 0 ELSE 1 END"
SERVED = (f"SELECT priority AS served_priority, COALESCE(owner, '') AS served_owner, SUM(charge) AS served FROM jobs "
          f"WHERE status = '{IN_PROGRESS}' GROUP BY priority, COALESCE(owner, '')")
QUEUE = (f"SELECT id, {RERUN_KEY} AS rerun, priority, COALESCE(served, 0) + COALESCE(SUM(charge) OVER (PARTITION "
         "BY priority, COALESCE(owner, '') ORDER BY created_at, id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), "
         f"0) AS share, {GROUP_KEY} AS grouped, created_at, cost FROM jobs LEFT JOIN ({SERVED}) AS running ON "
         f"served_priority = priority AND served_owner = COALESCE(owner, '') WHERE status = '{QUEUED}'")
QUEUE_ORDER = "rerun, priority, share, grouped, created_at, id"


class StoreUnavailable(Exception):
    """The database cannot be reached or written now (a server restarting, a read-only or full disk); the same
    call may succeed once it is back. Nothing was written."""


class JobChanged(Exception):
    """A guarded write found the job not as the writer expected (claimed, ended, taken over, or deleted)."""


class Claim(NamedTuple):
    """An Idempotency-Key already used: the request it came with, and its job (None while being submitted)."""

    fingerprint: str
    job_id: str | None


class Taken(NamedTuple):
    """A running job whose runner's lease ran out, now leased to the runner that took it over."""

    job: Job
    cancel_requested: bool


class QueuePlace(NamedTuple):
    """Where a queued job stands: 1 for the job the next claim takes (if nothing changes before it), 2 for the
    one after...; and the estimated GPU-seconds of the jobs up to it, itself included."""

    position: int
    gpu_s: float


class Leases(NamedTuple):
    """What a runner's heartbeat learned about the jobs it runs."""

    lost: set[str]  # taken over by another runner (its lease had run out), or deleted: stop without a word
    cancel: set[str]  # a client asked (through another replica) to cancel them


class Session:
    """A connection inside `JobStore._reading` / `_writing`; statements use `?` parameters, which `paramstyle`
    turns into the driver's."""

    def __init__(self, conn: Any, paramstyle: Callable[[str], str] = str) -> None:
        self.conn, self.paramstyle = conn, paramstyle

    def all(self, sql: str, params: Collection[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self.conn.execute(self.paramstyle(sql), tuple(params))
        return cursor.fetchall() if cursor.description is not None else []

    def one(self, sql: str, params: Collection[Any] = ()) -> tuple[Any, ...] | None:
        return self.conn.execute(self.paramstyle(sql), tuple(params)).fetchone()

    def run(self, sql: str, params: Collection[Any] = ()) -> int:
        """The number of rows changed."""
        return self.conn.execute(self.paramstyle(sql), tuple(params)).rowcount


class JobStore(ABC):
    """Durable jobs, thread-safe; every method is one transaction."""

    shared: bool  # several ingress replicas may use it at once
    LOCK = ""  # appended to a SELECT whose rows the transaction then changes (PostgreSQL: FOR UPDATE)
    SKIP_LOCKED = ""  # the same, skipping rows another transaction holds (PostgreSQL: FOR UPDATE SKIP LOCKED)

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Session]: ...

    @abstractmethod
    def _writing(self) -> AbstractContextManager[Session]:
        """A write transaction: committed when the block ends, rolled back if it raises."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _create_schema(self, db: Session) -> None:
        for statement in TABLES:
            db.run(statement)
        self._migrate(db)
        for statement in INDEXES:
            db.run(statement)

    def _migrate(self, db: Session) -> None:
        """Brings tables made by an older version up to TABLES (before the indexes are made)."""

    # ------------------------------------------------------------------ records

    def add(self, job: Job) -> None:
        """Insert a new job; ValueError if its id is already stored."""
        row = _row(job)
        with self._writing() as db:
            added = db.run(f"INSERT INTO jobs (id, {', '.join(row)}) VALUES (?{', ?' * len(row)}) "
                           "ON CONFLICT DO NOTHING", (job.id, *row.values()))
        if not added:
            raise ValueError(f"job {job.id!r} already exists")

    def get(self, job_id: str) -> Job | None:
        with self._reading() as db:
            row = db.one("SELECT data FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else Job.model_validate_json(row[0])

    def get_many(self, job_ids: Collection[str]) -> list[Job]:
        """The stored ones of these jobs."""
        if not job_ids:
            return []
        with self._reading() as db:
            rows = db.all(f"SELECT data FROM jobs WHERE id IN ({_marks(job_ids)})", tuple(job_ids))
        return [Job.model_validate_json(row[0]) for row in rows]

    def update(self, job_id: str, *, when_status: JobStatus | None = None, when_held_by: str | None = None,
               **changes: Any) -> Job:
        """Apply field changes, re-validate, persist and return the new job.

        Values may be given in either form (``status="completed"`` or ``JobStatus.COMPLETED``).
        KeyError for an unknown id; ValueError for an unknown field, a change of id, or an invalid value
        (pydantic's ValidationError is a ValueError). Guards, checked in the same transaction: `when_status`,
        the job must be in that status; `when_held_by`, the job must be running under that runner's lease (a
        missing job fails this guard too). A guard that fails raises JobChanged and writes nothing.
        """
        unknown = changes.keys() - Job.model_fields.keys()
        if unknown:
            raise ValueError(f"unknown job fields: {sorted(unknown)}")
        if changes.get("id", job_id) != job_id:
            raise ValueError("a job's id cannot change")
        with self._writing() as db:
            row = db.one(f"SELECT data, status, lease_owner FROM jobs WHERE id = ?{self.LOCK}", (job_id,))
            if when_held_by is not None and (row is None or row[1:] != (IN_PROGRESS, when_held_by)):
                raise JobChanged(f"job {job_id} is no longer run by {when_held_by}")
            if row is None:
                raise KeyError(job_id)
            if when_status is not None and row[1] != JobStatus(when_status).value:
                raise JobChanged(f"job {job_id} is {row[1]}, not {JobStatus(when_status).value}")
            # Same outcome as model_copy(update=...) plus re-validation, minus pydantic's
            # serializer warnings about raw values (e.g. a str status) in a copied model.
            job = Job.model_validate({**Job.model_validate_json(row[0]).model_dump(), **changes})
            self._write(db, job)
        return job

    def delete(self, job_id: str, finished_only: bool = False) -> bool:
        """Remove a job (and the idempotency key that made it); False if there was none, or, with
        `finished_only`, if it has not ended."""
        status, params = _status_in(TERMINAL if finished_only else ())
        with self._writing() as db:
            deleted = db.run(f"DELETE FROM jobs WHERE id = ? AND {status}", (job_id, *params))
            if deleted:
                db.run("DELETE FROM idempotency_keys WHERE job_id = ?", (job_id,))
        return deleted > 0

    def list(self, limit: int = 20, after: str | None = None, owner: str | None = None) -> tuple[list[Job], bool]:
        """A page of jobs (of `owner` only, if given), newest first, and whether more follow.

        ``after`` is the id of the previous page's last job; KeyError if no such job is stored.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        conditions, params = (["owner = ?"], [owner]) if owner is not None else ([], [])
        with self._reading() as db:
            if after is not None:
                anchor = db.one(f"SELECT created_at FROM jobs WHERE {' AND '.join(['id = ?', *conditions])}",
                                (after, *params))
                if anchor is None:
                    raise KeyError(after)
                conditions.append("(created_at < ? OR (created_at = ? AND id < ?))")
                params += [anchor[0], anchor[0], after]
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            rows = db.all(f"SELECT data FROM jobs{where} ORDER BY created_at DESC, id DESC LIMIT ?",
                          (*params, limit + 1))
        return [Job.model_validate_json(r[0]) for r in rows[:limit]], len(rows) > limit

    def count_owned(self, owner: str, *statuses: JobStatus) -> int:
        """How many of `owner`'s jobs are in any of these statuses."""
        status, params = _status_in(statuses)
        with self._reading() as db:
            return db.one(f"SELECT COUNT(*) FROM jobs WHERE {status} AND owner = ?", (*params, owner))[0]

    def finished_before(self, when: float) -> list[str]:
        """Ids of the jobs that ended (completed, failed, cancelled) before unix time `when`."""
        status, params = _status_in(TERMINAL)
        with self._reading() as db:
            rows = db.all(f"SELECT id FROM jobs WHERE {status} AND completed_at < ?", (*params, when))
        return [row[0] for row in rows]

    def ended_since(self, when: float) -> list[Job]:
        """The jobs that ended (completed, failed, cancelled) at or after unix time `when`, first ended first."""
        status, params = _status_in(TERMINAL)
        with self._reading() as db:
            rows = db.all(f"SELECT data FROM jobs WHERE {status} AND completed_at >= ? ORDER BY completed_at, id",
                          (*params, when))
        return [Job.model_validate_json(row[0]) for row in rows]

    def in_status(self, *statuses: JobStatus) -> list[Job]:
        """Jobs in any of these statuses (all jobs if none are given), oldest first."""
        status, params = _status_in(statuses)
        with self._reading() as db:
            rows = db.all(f"SELECT data FROM jobs WHERE {status} ORDER BY created_at, id", params)
        return [Job.model_validate_json(r[0]) for r in rows]

    def last_completed(self, limit: int) -> list[Job]:
        """The `limit` jobs that completed last, newest first."""
        with self._reading() as db:
            rows = db.all("SELECT data FROM jobs WHERE status = ? ORDER BY completed_at DESC LIMIT ?",
                          [JobStatus.COMPLETED.value, limit])
        return [Job.model_validate_json(r[0]) for r in rows]

    def count(self, *statuses: JobStatus) -> int:
        """How many jobs are in any of these statuses (all jobs if none are given)."""
        status, params = _status_in(statuses)
        with self._reading() as db:
            return db.one(f"SELECT COUNT(*) FROM jobs WHERE {status}", params)[0]

    # ------------------------------------------------------------------ Idempotency-Keys

    def claim_key(self, owner: str | None, key: str, fingerprint: str) -> Claim | None:
        """Records a new Idempotency-Key (None), or gives what it was first used for."""
        with self._writing() as db:
            if db.run("INSERT INTO idempotency_keys (owner, key, fingerprint) VALUES (?, ?, ?) ON CONFLICT DO "
                      "NOTHING", (owner or "", key, fingerprint)):
                return None
            row = db.one("SELECT fingerprint, job_id FROM idempotency_keys WHERE owner = ? AND key = ?",
                         (owner or "", key))
        return Claim(*row)

    def settle_key(self, owner: str | None, key: str, job_id: str | None) -> None:
        """The job a claimed key made; None: the request failed, and the key is free again."""
        with self._writing() as db:
            if job_id is None:
                db.run("DELETE FROM idempotency_keys WHERE owner = ? AND key = ?", (owner or "", key))
            else:
                db.run("UPDATE idempotency_keys SET job_id = ? WHERE owner = ? AND key = ?",
                       (job_id, owner or "", key))

    # ------------------------------------------------------------------ the queue

    def claim(self, runner: str, lease_s: float, group_delay_s: float, now: float | None = None) -> Job | None:
        """Takes the next queued job (see QUEUE_ORDER) and starts its next run under `runner`'s lease, which
        holds `lease_s` unless renewed; None when nothing waits. No two runners ever claim one job."""
        now = time.time() if now is None else now
        with self._writing() as db:
            # the status again outside: PostgreSQL re-checks a row claimed meanwhile on these conditions only
            row = db.one(f"SELECT jobs.data FROM jobs JOIN ({QUEUE}) AS queue ON queue.id = jobs.id WHERE jobs.status "
                         f"= '{QUEUED}' ORDER BY "
                         f"{', '.join(f'queue.{key}' for key in QUEUE_ORDER.split(', '))} LIMIT 1{self.SKIP_LOCKED}",
                         (now - group_delay_s,))
            if row is None:
                return None
            job = started(Job.model_validate_json(row[0]), runner, now)
            self._write(db, job, claimed_at=now, lease_owner=runner, lease_expires_at=now + lease_s,
                        cancel_requested=0)
        return job

    def queue_position(self, job_id: str, group_delay_s: float, now: float | None = None) -> int | None:
        """1 for the job the next claim takes (if nothing changes before it), 2 for the one after...; None when
        the job is not queued."""
        place = self.queue_place(job_id, group_delay_s, now)
        return place.position if place is not None else None

    def queue_place(self, job_id: str, group_delay_s: float, now: float | None = None) -> QueuePlace | None:
        """The job's place in the queue's order now; None when it is not queued."""
        now = time.time() if now is None else now
        with self._reading() as db:
            keys = QUEUE_ORDER.split(", ")
            position, gpu_s = db.one(
                f"WITH queue AS ({QUEUE}) SELECT COUNT(*), SUM(ahead.cost) FROM queue AS ahead, queue AS job WHERE "
                f"job.id = ? AND ({', '.join(f'ahead.{key}' for key in keys)}) <= "
                f"({', '.join(f'job.{key}' for key in keys)})", (now - group_delay_s, job_id))
        return QueuePlace(position, gpu_s or 0.0) if position else None

    def waiting_since(self, priority: int) -> float | None:
        """When the oldest queued job of this class (Priority.rank) was submitted; None when none waits."""
        with self._reading() as db:
            return db.one(f"SELECT MIN(created_at) FROM jobs WHERE status = '{QUEUED}' AND priority = ?",
                          (priority,))[0]

    def renew(self, runner: str, lease_s: float, running: Collection[str], now: float | None = None) -> Leases:
        """The runner's heartbeat: its leases hold `lease_s` more; which of its `running` jobs it lost, and which
        a client asked to cancel."""
        now = time.time() if now is None else now
        with self._writing() as db:
            renewed = db.all(f"UPDATE jobs SET lease_expires_at = ? WHERE lease_owner = ? AND status = "
                             f"'{IN_PROGRESS}' RETURNING id, cancel_requested", (now + lease_s, runner))
            held = {row[0] for row in db.all(
                f"SELECT id FROM jobs WHERE lease_owner = ? AND id IN ({_marks(running)})", (runner, *running))
            } if running else set()
        return Leases(lost=set(running) - held, cancel={job_id for job_id, cancel in renewed if cancel})

    def take_expired(self, runner: str, lease_s: float, every_running: bool = False,
                     now: float | None = None) -> list[Taken]:
        """Running jobs whose lease ran out (their runner stopped or lost the store), oldest first, now leased to
        `runner` so that it ends their run; `every_running`: all running jobs (a store only one runner uses,
        after that runner restarted)."""
        now = time.time() if now is None else now
        expired = "" if every_running else " AND (lease_expires_at IS NULL OR lease_expires_at < ?)"
        with self._writing() as db:
            rows = db.all(f"SELECT data, cancel_requested FROM jobs WHERE status = '{IN_PROGRESS}'{expired} "
                          f"ORDER BY created_at, id{self.SKIP_LOCKED}", () if every_running else (now,))
            taken = [Taken(Job.model_validate_json(data), bool(cancel)) for data, cancel in rows]
            if taken:
                db.run(f"UPDATE jobs SET lease_owner = ?, lease_expires_at = ? WHERE id IN ({_marks(taken)})",
                       (runner, now + lease_s, *(t.job.id for t in taken)))
        return taken

    def request_cancel(self, job_id: str) -> bool:
        """Flags a running job for its runner's next heartbeat; False if it is not running."""
        with self._writing() as db:
            return db.run(f"UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = '{IN_PROGRESS}'",
                          (job_id,)) > 0

    def _write(self, db: Session, job: Job, **queue_columns: Any) -> None:
        columns = _row(job) | queue_columns
        db.run(f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in columns)} WHERE id = ?",
               (*columns.values(), job.id))


def started(job: Job, runner: str, now: float) -> Job:
    """The job with its next run begun by `runner`."""
    attempt = Attempt(number=len(job.attempts) + 1, started_at=now)
    return Job.model_validate({**job.model_dump(), "status": JobStatus.IN_PROGRESS, "started_at": job.started_at
                               or now, "attempts": [*job.attempts, attempt]})


def _row(job: Job) -> dict[str, Any]:
    """The job's stored columns, as of its JSON."""
    runs = sum(a.error is None or a.error.code is not ErrorCode.PREEMPTED for a in job.attempts)  # not a re-run
    return {"status": job.status.value, "created_at": job.created_at, "data": job.model_dump_json(),
            "owner": job.owner, "model": job.model, "runs": runs, "completed_at": job.completed_at,
            "priority": job.priority.rank, "charge": job.estimated_gpu_s / job.share_weight,
            "cost": job.estimated_gpu_s}


def _marks(values: Collection[Any]) -> str:
    return ", ".join("?" * len(values))


def _status_in(statuses: tuple[JobStatus, ...]) -> tuple[str, list[str]]:
    """A WHERE condition on the status (true for any when none are given), and its parameters."""
    if not statuses:
        return "1 = 1", []
    values = [JobStatus(s).value for s in statuses]
    return f"status IN ({_marks(values)})", values
