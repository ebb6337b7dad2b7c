import threading
from pathlib import Path

import pytest

from serve_app.schemas import ErrorCode, Job, JobError, JobStatus
from skyreels.progress import Phase
from serve_app.store import JobStore


def make_job(job_id: str, created_at: float = 1000.0, **fields) -> Job:
    base = dict(
        id=job_id,
        model="skyreels-v1-t2v",
        prompt=f"prompt {job_id}",
        negative_prompt="blurry",
        size="960x544",
        num_frames=97,
        num_inference_steps=30,
        guidance_scale=6.0,
        embedded_guidance_scale=1.0,
        seed=42,
        fps=24,
        created_at=created_at,
    )
    return Job(**(base | fields))


@pytest.fixture
def store():
    with JobStore(":memory:") as s:
        yield s


def test_job_survives_reopening_the_file(tmp_path: Path):
    path = tmp_path / "db" / "jobs.sqlite"
    job = make_job(
        "video_1",
        status=JobStatus.FAILED,
        error=JobError(code=ErrorCode.WORKER_DIED, message="rank 3 lost"),
        metrics={"text_encoder": 0.5, "denoise": 12.25},
    )
    store = JobStore(path)
    store.add(job)
    store.update("video_1", progress=40)
    store.close()

    with JobStore(str(path)) as reopened:
        assert reopened.get("video_1") == job.model_copy(update={"progress": 40})
        assert reopened.count() == 1


def test_add_get_delete(store: JobStore):
    job = make_job("a")
    store.add(job)
    assert store.get("a") == job
    with pytest.raises(ValueError, match="already exists"):
        store.add(make_job("a"))
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.get("a") is None


def test_update_persists_and_revalidates(store: JobStore):
    store.add(make_job("a"))
    updated = store.update(
        "a",
        status="in_progress",
        phase=Phase.DENOISING,
        current_step=3,
        total_steps=30,
        error={"code": "stage_failed", "message": "boom"},
    )
    assert updated.status is JobStatus.IN_PROGRESS
    assert updated.error == JobError(code=ErrorCode.STAGE_FAILED, message="boom")
    assert store.get("a") == updated
    assert store.in_status(JobStatus.IN_PROGRESS) == [updated]
    assert store.in_status(JobStatus.QUEUED) == []


def test_update_refuses_bad_changes(store: JobStore):
    store.add(make_job("a"))
    with pytest.raises(KeyError):
        store.update("missing", progress=1)
    with pytest.raises(ValueError):
        store.update("a", progress=101)
    with pytest.raises(ValueError, match="unknown job fields"):
        store.update("a", bogus=1)
    with pytest.raises(ValueError, match="id"):
        store.update("a", id="b")
    assert store.get("a") == make_job("a")


def test_pagination_newest_first(store: JobStore):
    for i in range(5):
        store.add(make_job(f"job{i}", created_at=1000.0 + i))

    pages, after = [], None
    while True:
        page, has_more = store.list(limit=2, after=after)
        pages.append(([j.id for j in page], has_more))
        if not has_more:
            break
        after = page[-1].id

    assert pages == [(["job4", "job3"], True), (["job2", "job1"], True), (["job0"], False)]
    assert store.list(limit=5) == (store.list(limit=10)[0], False)


def test_pagination_breaks_created_at_ties_by_id(store: JobStore):
    for job_id in ["b", "d", "a", "c"]:
        store.add(make_job(job_id, created_at=5.0))
    first, more = store.list(limit=2)
    second, last = store.list(limit=2, after=first[-1].id)
    assert [j.id for j in first + second] == ["d", "c", "b", "a"]
    assert (more, last) == (True, False)


def test_pagination_refuses_unknown_cursor_and_bad_limit(store: JobStore):
    assert store.list() == ([], False)
    with pytest.raises(KeyError):
        store.list(after="nope")
    with pytest.raises(ValueError):
        store.list(limit=0)


def test_in_status_oldest_first_and_count(store: JobStore):
    store.add(make_job("new", created_at=3.0))
    store.add(make_job("old", created_at=1.0, status=JobStatus.IN_PROGRESS))
    store.add(make_job("mid", created_at=2.0))
    store.add(make_job("done", created_at=0.0, status=JobStatus.COMPLETED))

    assert [j.id for j in store.in_status(JobStatus.QUEUED)] == ["mid", "new"]
    active = store.in_status(JobStatus.QUEUED, JobStatus.IN_PROGRESS)
    assert [j.id for j in active] == ["old", "mid", "new"]
    assert store.in_status(JobStatus.CANCELLED) == []
    assert store.count(JobStatus.QUEUED, JobStatus.IN_PROGRESS) == 3
    assert store.count(JobStatus.COMPLETED) == 1
    assert store.count() == 4


def test_concurrent_updates_from_threads(tmp_path: Path):
    with JobStore(tmp_path / "jobs.sqlite") as store:
        for i in range(8):
            store.add(make_job(f"j{i}"))

        def work(job_id: str) -> None:
            for step in range(1, 26):
                store.update(job_id, current_step=step, progress=step * 4)

        threads = [threading.Thread(target=work, args=(f"j{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        assert all(j.current_step == 25 and j.progress == 100 for j in store.list(limit=8)[0])
