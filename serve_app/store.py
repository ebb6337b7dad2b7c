"""Durable job records in SQLite: survive an ingress restart, thread-safe, cursor-paginated."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from serve_app.schemas import Job, JobStatus

logger = logging.getLogger(__name__)

MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id         TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_owner_created ON jobs (json_extract(data, '$.owner'), created_at, id);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    owner       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id      TEXT,
    PRIMARY KEY (owner, key)
);
"""
OWNER = "json_extract(data, '$.owner')"
TERMINAL = tuple(status for status in JobStatus if status.is_terminal)


class Claim(NamedTuple):
    """An Idempotency-Key already used: the request it came with, and its job (None while being submitted)."""

    fingerprint: str
    job_id: str | None


class JobStore:
    """Jobs as JSON rows, with the columns queries need (id, status, created_at) kept beside them; the owner
    is read from the JSON (an index on the expression), so databases from before owners need no migration.

    One connection shared by all threads and guarded by a lock; every method is one transaction.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        with self._lock, self._conn:
            if self.path != MEMORY:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        logger.info("job store at %s", self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add(self, job: Job) -> None:
        """Insert a new job; ValueError if its id is already stored."""
        try:
            with self._lock, self._conn:
                self._conn.execute(
                    "INSERT INTO jobs (id, status, created_at, data) VALUES (?, ?, ?, ?)",
                    (job.id, job.status.value, job.created_at, job.model_dump_json()),
                )
        except sqlite3.IntegrityError as e:
            raise ValueError(f"job {job.id!r} already exists") from e

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.model_validate_json(row[0])

    def update(self, job_id: str, **changes: Any) -> Job:
        """Apply field changes, re-validate, persist and return the new job.

        Values may be given in either form (``status="completed"`` or ``JobStatus.COMPLETED``).
        KeyError for an unknown id; ValueError for an unknown field, a change of id, or an
        invalid value (pydantic's ValidationError is a ValueError).
        """
        unknown = changes.keys() - Job.model_fields.keys()
        if unknown:
            raise ValueError(f"unknown job fields: {sorted(unknown)}")
        if changes.get("id", job_id) != job_id:
            raise ValueError("a job's id cannot change")
        with self._lock, self._conn:
            row = self._conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            # Same outcome as model_copy(update=...) plus re-validation, minus pydantic's
            # serializer warnings about raw values (e.g. a str status) in a copied model.
            job = Job.model_validate({**Job.model_validate_json(row[0]).model_dump(), **changes})
            self._conn.execute(
                "UPDATE jobs SET status = ?, created_at = ?, data = ? WHERE id = ?",
                (job.status.value, job.created_at, job.model_dump_json(), job_id),
            )
        return job

    def delete(self, job_id: str, finished_only: bool = False) -> bool:
        """Remove a job (and the idempotency key that made it); False if there was none, or, with
        `finished_only`, if it has not ended."""
        status, params = _status_in(TERMINAL if finished_only else ())
        with self._lock, self._conn:
            cursor = self._conn.execute(f"DELETE FROM jobs WHERE id = ? AND {status}", (job_id, *params))
            if cursor.rowcount:
                self._conn.execute("DELETE FROM idempotency_keys WHERE job_id = ?", (job_id,))
        return cursor.rowcount > 0

    def list(self, limit: int = 20, after: str | None = None, owner: str | None = None) -> tuple[list[Job], bool]:
        """A page of jobs (of `owner` only, if given), newest first, and whether more follow.

        ``after`` is the id of the previous page's last job; KeyError if no such job is stored.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        conditions, params = ([f"{OWNER} = ?"], [owner]) if owner is not None else ([], [])
        with self._lock:
            if after is not None:
                anchor = self._conn.execute(
                    f"SELECT created_at FROM jobs WHERE id = ?{' AND ' + conditions[0] if conditions else ''}",
                    (after, *params),
                ).fetchone()
                if anchor is None:
                    raise KeyError(after)
                conditions.append("(created_at < ? OR (created_at = ? AND id < ?))")
                params += [anchor[0], anchor[0], after]
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            rows = self._conn.execute(
                f"SELECT data FROM jobs{where} ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit + 1)
            ).fetchall()
        return [Job.model_validate_json(r[0]) for r in rows[:limit]], len(rows) > limit

    def count_owned(self, owner: str, *statuses: JobStatus) -> int:
        """How many of `owner`'s jobs are in any of these statuses."""
        status, params = _status_in(statuses)
        with self._lock:
            return self._conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {status} AND {OWNER} = ?",
                                      (*params, owner)).fetchone()[0]

    def finished_before(self, when: float) -> list[str]:
        """Ids of the jobs that ended (completed, failed, cancelled) before unix time `when`."""
        status, params = _status_in(TERMINAL)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id FROM jobs WHERE {status} AND json_extract(data, '$.completed_at') < ?", (*params, when)
            ).fetchall()
        return [row[0] for row in rows]

    def claim_key(self, owner: str | None, key: str, fingerprint: str) -> Claim | None:
        """Records a new Idempotency-Key (None), or gives what it was first used for."""
        with self._lock, self._conn:
            inserted = self._conn.execute(
                "INSERT OR IGNORE INTO idempotency_keys (owner, key, fingerprint) VALUES (?, ?, ?)",
                (owner or "", key, fingerprint)).rowcount
            if inserted:
                return None
            row = self._conn.execute("SELECT fingerprint, job_id FROM idempotency_keys WHERE owner = ? AND key = ?",
                                     (owner or "", key)).fetchone()
        return Claim(*row)

    def settle_key(self, owner: str | None, key: str, job_id: str | None) -> None:
        """The job a claimed key made; None: the request failed, and the key is free again."""
        with self._lock, self._conn:
            if job_id is None:
                self._conn.execute("DELETE FROM idempotency_keys WHERE owner = ? AND key = ?", (owner or "", key))
            else:
                self._conn.execute("UPDATE idempotency_keys SET job_id = ? WHERE owner = ? AND key = ?",
                                   (job_id, owner or "", key))

    def in_status(self, *statuses: JobStatus) -> list[Job]:
        """Jobs in any of these statuses (all jobs if none are given), oldest first."""
        status, params = _status_in(statuses)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT data FROM jobs WHERE {status} ORDER BY created_at, id", params
            ).fetchall()
        return [Job.model_validate_json(r[0]) for r in rows]

    def count(self, *statuses: JobStatus) -> int:
        """How many jobs are in any of these statuses (all jobs if none are given)."""
        status, params = _status_in(statuses)
        with self._lock:
            return self._conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {status}", params).fetchone()[0]


def _status_in(statuses: tuple[JobStatus, ...]) -> tuple[str, list[str]]:
    """A WHERE condition on the status (true for any when none are given), and its parameters."""
    if not statuses:
        return "1", []
    values = [JobStatus(s).value for s in statuses]
    return f"status IN ({', '.join('?' * len(values))})", values
