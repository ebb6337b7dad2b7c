"""The job store in one SQLite file: for one ingress replica (the default)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serve_app.store.base import COLUMNS, JobStore, Session, StoreUnavailable

logger = logging.getLogger(__name__)

MEMORY = ":memory:"
# Columns a database made before the queue moved into the store lacks, filled from each job's JSON.
BACKFILL = {"owner": "json_extract(data, '$.owner')", "model": "json_extract(data, '$.model')",
            "runs": "json_array_length(data, '$.attempts')", "completed_at": "json_extract(data, '$.completed_at')",
            "charge": "COALESCE(json_extract(data, '$.estimated_gpu_s') / json_extract(data, '$.share_weight'), 0)",
            "priority": "CASE json_extract(data, '$.priority') WHEN 'interactive' THEN 0 ELSE 1 END",
            "cost": "COALESCE(json_extract(data, '$.estimated_gpu_s'), 0)"}


# What SQLite says when the disk, not the statement, is at fault: the transaction was rolled back.
UNAVAILABLE = ("readonly", "disk is full", "disk i/o error", "unable to open", "database is locked")


@contextmanager
def _unavailable_as_such() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as error:
        if any(cause in str(error).lower() for cause in UNAVAILABLE):
            raise StoreUnavailable(f"the job store cannot be written now ({error})") from error
        raise


class SqliteJobStore(JobStore):
    """One connection shared by all threads and guarded by a lock; a write transaction takes the database's write
    lock at its start (BEGIN IMMEDIATE), so that what it read stays true until it commits, even for another process
    on the same file."""

    shared = False

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        if self.path != MEMORY:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._writing() as db:
            self._create_schema(db)
        logger.info("job store at %s", self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        with self._lock, _unavailable_as_such():
            yield Session(self._conn)

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._lock, _unavailable_as_such():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Session(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _migrate(self, db: Session) -> None:
        present = {row[1] for row in db.all("PRAGMA table_info(jobs)")}
        for name, kind in COLUMNS.items():
            if name not in present:
                db.run(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
                if name in BACKFILL:
                    db.run(f"UPDATE jobs SET {name} = {BACKFILL[name]}")
                logger.info("job store: added column %s", name)
        db.run("DROP INDEX IF EXISTS jobs_owner_created")  # on the owner in the JSON, before the column
