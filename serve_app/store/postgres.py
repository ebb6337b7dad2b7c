"""The job store in PostgreSQL: shared by several ingress replicas.

Each transaction takes a connection from a small pool (one per thread at a time; connections are opened as
threads need them and kept for the next call). Rows a transaction changes are locked as it reads them
(`FOR UPDATE`), and the queue's claim skips rows another replica is claiming (`FOR UPDATE SKIP LOCKED`), so
replicas never wait for each other's claims and never claim one job twice.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from serve_app.store.base import COLUMNS, JobStore, Session, StoreUnavailable

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

# Any constant: makes replicas that start together create the schema one after the other.
SCHEMA_LOCK = 0x5C7E1500
CONNECT_TIMEOUT_S = 10  # the store is called on the ingress's event loop: an unreachable server must not hang it


class PostgresJobStore(JobStore):
    shared = True
    LOCK = " FOR UPDATE OF jobs"  # OF: the claim joins the queue's sort keys, whose rows are not locked
    SKIP_LOCKED = " FOR UPDATE OF jobs SKIP LOCKED"

    def __init__(self, url: str) -> None:
        import psycopg  # only PostgreSQL users need it: pip install 'skyreels-serve[postgres]'

        self._connect = lambda: psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        self._idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue()
        self._closed = threading.Event()
        with self._writing() as db:
            db.one("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            self._create_schema(db)
        logger.info("job store in PostgreSQL at %s", _without_password(url))

    def _migrate(self, db: Session) -> None:
        for name, kind in COLUMNS.items():  # columns a database made by an older version lacks (empty or default)
            db.run(f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {name} {kind}")

    def close(self) -> None:
        self._closed.set()
        self._close_idle()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        if self._closed.is_set():
            raise RuntimeError("the job store is closed")
        import psycopg

        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
            try:
                yield conn
            finally:
                if conn.broken or conn.closed or self._closed.is_set():
                    conn.close()
                    if conn.broken:  # the server restarted: the idle connections are as dead as this one
                        self._close_idle()
                else:
                    self._idle.put(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            raise StoreUnavailable(f"the job store's PostgreSQL cannot be reached now ({error})") from error

    def _close_idle(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        with self._connection() as conn:
            yield Session(conn, _pyformat)

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._connection() as conn, conn.transaction():
            yield Session(conn, _pyformat)


def _pyformat(sql: str) -> str:
    """psycopg's parameters are %s."""
    return sql.replace("%", "%%").replace("?", "%s")


def _without_password(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    return " ".join(f"{name}={'***' if name == 'password' else value}" for name, value in params.items())
