"""The job store when its database is away: a PostgreSQL restart and a SQLite file that cannot be written give
StoreUnavailable (the API's 503 with Retry-After), nothing is lost or corrupted, and the store works again by
itself once the database is back. Real servers and files: Debian's PostgreSQL, a file made immutable."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from stand_in_stages import SERVED

from serve_app.requests import new_job
from serve_app.schemas import Job, VideoCreateParams
from serve_app.store import StoreUnavailable, open_store


def _job(prompt: str) -> Job:
    job, _ = new_job(VideoCreateParams(prompt=prompt, size="64x64", num_frames=9, num_inference_steps=1), None,
                     SERVED)
    return job


def test_a_postgresql_restart_is_unavailable_then_reconnected(postgres_server, postgres_url: str) -> None:
    store = open_store("", postgres_url)
    before = _job("before the restart")
    store.add(before)
    with postgres_server.stopped():
        for call in (lambda: store.add(_job("during")), lambda: store.get(before.id)):
            with pytest.raises(StoreUnavailable, match="cannot be reached"):
                call()
    after = _job("after the restart")
    store.add(after)  # a new connection, without any help
    assert [job.id for job in store.get_many([before.id, after.id])] == sorted([before.id, after.id])
    assert store.count() == 2
    store.close()


def test_a_sqlite_file_that_cannot_be_written_is_unavailable_and_not_corrupted(tmp_path: Path) -> None:
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(tmp_path)]).returncode != 0:
        pytest.skip("needs chattr +i (root, on a file system with attributes)")
    subprocess.run(["chattr", "-i", str(tmp_path)], check=True)
    path = tmp_path / "jobs.sqlite3"
    store = open_store(str(path))
    kept = _job("kept")
    store.add(kept)
    # the database and its WAL; not the shared-memory index, which SQLite maps (a write to it would be SIGBUS)
    files = [str(file) for file in tmp_path.iterdir() if not file.name.endswith("-shm")]
    subprocess.run(["chattr", "+i", *files], check=True)
    try:
        with pytest.raises(StoreUnavailable, match="cannot be written"):
            store.add(_job("refused"))
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
    store.add(_job("accepted once writable"))
    assert store.get(kept.id) == kept and store.count() == 2
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
