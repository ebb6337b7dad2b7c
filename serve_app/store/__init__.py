"""The job store: SQLite for one ingress replica (the default), PostgreSQL for several."""

from __future__ import annotations

from serve_app.store.base import Claim, JobChanged, JobStore, Leases, QueuePlace, StoreUnavailable, Taken
from serve_app.store.sqlite import SqliteJobStore

__all__ = ["Claim", "JobChanged", "JobStore", "Leases", "QueuePlace", "SqliteJobStore", "Taken", "open_store"]


def open_store(database_path: str, database_url: str | None = None) -> JobStore:
    """PostgreSQL when `database_url` is given (it wins), else the SQLite file at `database_path`."""
    if database_url is not None:
        from serve_app.store.postgres import PostgresJobStore

        return PostgresJobStore(database_url)
    return SqliteJobStore(database_path)
