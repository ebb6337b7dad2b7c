"""The job store, run against SQLite and a real PostgreSQL server: records, pages, keys, and the queue (claims,
the model-grouping policy, leases, cancel flags), with concurrent claimers."""

import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from serve_app.schemas import Attempt, ErrorCode, Job, JobError, JobStatus
from serve_app.store import JobChanged, JobStore, SqliteJobStore, open_store
from skyreels.progress import Phase

T2V, I2V = "skyreels-v1-t2v", "skyreels-v1-i2v"
LEASE_S, DELAY_S = 10.0, 30.0


def make_job(job_id: str, created_at: float = 1000.0, **fields) -> Job:
    base = dict(
        id=job_id,
        model=T2V,
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


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request, tmp_path: Path) -> Callable[[], JobStore]:
    """Opens a store on one database (each call: another connection to it, as another replica has)."""
    if request.param == "sqlite":
        return lambda: open_store(str(tmp_path / "jobs.sqlite3"))
    url = request.getfixturevalue("postgres_url")
    return lambda: open_store(str(tmp_path / "unused.sqlite3"), url)


@pytest.fixture
def store(opener) -> Iterator[JobStore]:
    with opener() as s:
        yield s


def test_job_survives_reopening_the_file(tmp_path: Path):
    path = tmp_path / "db" / "jobs.sqlite"
    job = make_job(
        "video_1",
        status=JobStatus.FAILED,
        error=JobError(code=ErrorCode.WORKER_DIED, message="rank 3 lost"),
        metrics={"text_encoder": 0.5, "denoise": 12.25},
    )
    store = SqliteJobStore(path)
    store.add(job)
    store.update("video_1", progress=40)
    store.close()

    with SqliteJobStore(str(path)) as reopened:
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


def test_last_completed_is_by_completion_not_submission(store: JobStore):
    for job_id, created_at, completed_at in (("a", 1.0, 30.0), ("b", 2.0, 10.0), ("c", 3.0, 20.0)):
        store.add(make_job(job_id, created_at=created_at, status=JobStatus.COMPLETED, completed_at=completed_at))
    store.add(make_job("queued", created_at=4.0))
    assert [job.id for job in store.last_completed(2)] == ["a", "c"]


def test_concurrent_updates_from_threads(store: JobStore):
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


def test_owner_pages_counts_and_expiry_read_the_columns(store: JobStore):
    store.add(make_job("mine", owner="key_a"))
    store.add(make_job("theirs", owner="key_b"))
    store.add(make_job("old", created_at=1.0, owner="key_a", status=JobStatus.COMPLETED, completed_at=50.0))
    assert [j.id for j in store.list(owner="key_a")[0]] == ["mine", "old"]
    assert store.count_owned("key_a", JobStatus.QUEUED) == 1
    assert store.finished_before(60.0) == ["old"] and store.finished_before(40.0) == []
    assert store.delete("mine", finished_only=True) is False and store.delete("old", finished_only=True) is True


def test_idempotency_keys(store: JobStore):
    assert store.claim_key("key_a", "k1", "f1") is None
    assert store.claim_key("key_a", "k1", "f2") == ("f1", None)
    store.settle_key("key_a", "k1", "video_1")
    assert store.claim_key("key_a", "k1", "f1") == ("f1", "video_1")
    assert store.claim_key(None, "k1", "f3") is None  # another owner's key
    store.settle_key(None, "k1", None)
    assert store.claim_key(None, "k1", "f4") is None


# ---------------------------------------------------------------------- the queue


def claim(store: JobStore, runner: str = "r1", now: float = 1000.0) -> str | None:
    job = store.claim(runner, LEASE_S, DELAY_S, now=now)
    return None if job is None else job.id


def test_a_claim_starts_the_oldest_job_under_a_lease(store: JobStore):
    store.add(make_job("new", created_at=3.0))
    store.add(make_job("old", created_at=1.0))
    store.add(make_job("done", created_at=0.0, status=JobStatus.COMPLETED))

    job = store.claim("r1", LEASE_S, DELAY_S, now=5.0)
    assert job.id == "old" and job.status is JobStatus.IN_PROGRESS and job.started_at == 5.0
    assert job.attempts == [Attempt(number=1, started_at=5.0)]
    assert store.get("old") == job
    assert [claim(store, now=6.0), claim(store, now=7.0)] == ["new", None]


def test_re_runs_go_first_oldest_first(store: JobStore):
    cut = [Attempt(number=1, started_at=1.0, ended_at=2.0, error=JobError(code=ErrorCode.INTERRUPTED, message="x"))]
    store.add(make_job("fresh", created_at=1.0))
    store.add(make_job("rerun-new", created_at=5.0, attempts=cut))
    store.add(make_job("rerun-old", created_at=4.0, attempts=cut))
    assert [store.queue_position(j, DELAY_S, now=10.0) for j in ("rerun-old", "rerun-new", "fresh")] == [1, 2, 3]
    assert [claim(store, now=10.0) for _ in range(3)] == ["rerun-old", "rerun-new", "fresh"]
    assert store.get("rerun-old").attempts[-1].number == 2


def test_jobs_of_the_held_model_go_first_within_the_delay(store: JobStore):
    store.add(make_job("t2v-running", created_at=0.0))
    assert claim(store, now=100.0) == "t2v-running"  # the gang holds T2V now
    store.add(make_job("i2v-old", created_at=100.0, model=I2V))
    store.add(make_job("t2v-a", created_at=101.0))
    store.add(make_job("t2v-b", created_at=102.0))
    # within the delay: the T2V jobs first, though the I2V job is older
    assert [store.queue_position(j, DELAY_S, now=110.0) for j in ("t2v-a", "t2v-b", "i2v-old")] == [1, 2, 3]
    assert claim(store, now=110.0) == "t2v-a"
    store.update("t2v-running", status=JobStatus.COMPLETED)
    store.update("t2v-a", status=JobStatus.COMPLETED)
    # nothing runs: the model started last is still on the gang
    assert claim(store, now=111.0) == "t2v-b"


def test_no_job_waits_past_the_delay(store: JobStore):
    store.add(make_job("t2v-running", created_at=0.0))
    assert claim(store, now=100.0) == "t2v-running"
    store.add(make_job("i2v-old", created_at=100.0, model=I2V))
    store.add(make_job("t2v-a", created_at=101.0))
    # the I2V job has waited longer than DELAY_S: it goes first, held model or not
    assert store.queue_position("i2v-old", DELAY_S, now=100.0 + DELAY_S + 1) == 1
    assert claim(store, now=100.0 + DELAY_S + 1) == "i2v-old"
    assert claim(store, now=100.0 + DELAY_S + 2) == "t2v-a"


def test_with_no_held_model_the_oldest_goes_first(store: JobStore):
    store.add(make_job("i2v", created_at=1.0, model=I2V))
    store.add(make_job("t2v", created_at=2.0))
    assert [claim(store, now=3.0), claim(store, now=4.0)] == ["i2v", "t2v"]
    assert store.queue_position("i2v", DELAY_S) is None  # not queued


def test_leases_renew_expire_and_are_taken_over(store: JobStore):
    store.add(make_job("a"))
    store.add(make_job("b", created_at=1001.0))
    assert [claim(store, "r1", now=1000.0), claim(store, "r2", now=1000.0)] == ["a", "b"]
    assert store.take_expired("r3", LEASE_S, now=1000.0 + LEASE_S - 1) == []
    assert store.renew("r1", LEASE_S, ["a"], now=1000.0 + LEASE_S - 1) == (set(), set())
    # r2 stops renewing: once its lease ran out, r3 takes its job over; r1's renewed lease still holds
    taken = store.take_expired("r3", LEASE_S, now=1000.0 + LEASE_S + 1)
    assert [(t.job.id, t.cancel_requested) for t in taken] == [("b", False)]
    assert store.take_expired("r4", LEASE_S, now=1000.0 + LEASE_S + 1) == []  # taken once
    assert store.renew("r2", LEASE_S, ["b"], now=1000.0 + LEASE_S + 2).lost == {"b"}
    with pytest.raises(JobChanged):
        store.update("b", when_held_by="r2", progress=50)  # the old runner's writes are refused
    assert store.update("b", when_held_by="r3", progress=50).progress == 50


def test_every_running_job_is_taken_after_a_restart_of_the_only_runner(store: JobStore):
    store.add(make_job("a"))
    claim(store, "before-restart", now=1000.0)
    assert [t.job.id for t in store.take_expired("after", LEASE_S, every_running=True, now=1001.0)] == ["a"]


def test_cancel_a_queued_job_or_flag_a_running_one(store: JobStore):
    store.add(make_job("queued"))
    store.add(make_job("running", created_at=999.0))
    assert claim(store, "r1") == "running"
    assert store.request_cancel("queued") is False
    cancelled = store.update("queued", when_status=JobStatus.QUEUED, status=JobStatus.CANCELLED)
    assert cancelled.status is JobStatus.CANCELLED
    with pytest.raises(JobChanged):  # a cancel racing a claim: the job is no longer queued
        store.update("running", when_status=JobStatus.QUEUED, status=JobStatus.CANCELLED)
    assert store.request_cancel("running") is True
    assert store.renew("r1", LEASE_S, ["running"], now=1001.0).cancel == {"running"}
    expired = store.take_expired("r2", LEASE_S, now=1002.0 + LEASE_S)  # r1 died before acting on it
    assert [(t.job.id, t.cancel_requested) for t in expired] == [("running", True)]


def test_concurrent_claimers_never_claim_one_job_twice(opener):
    stores = [opener() for _ in range(4)]
    for i in range(100):
        stores[0].add(make_job(f"j{i:03}", created_at=1000.0 + i, model=(T2V, I2V)[i % 2]))
    claims: Counter[str] = Counter()
    lock = threading.Lock()

    def claimer(store: JobStore, runner: str) -> None:
        while (job := store.claim(runner, LEASE_S, DELAY_S)) is not None:
            with lock:
                claims[job.id] += 1

    threads = [threading.Thread(target=claimer, args=(store, f"r{i}")) for i, store in enumerate(stores * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert claims == Counter({f"j{i:03}": 1 for i in range(100)})
    assert stores[0].count(JobStatus.IN_PROGRESS) == 100
    assert all(len(job.attempts) == 1 for job in stores[0].in_status(JobStatus.IN_PROGRESS))
    for store in stores:
        store.close()


def test_an_old_sqlite_database_is_brought_up_to_date(tmp_path: Path):
    """A file written before the queue moved into the store: its columns are added and filled from the JSON."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL, data TEXT NOT NULL);
            CREATE INDEX jobs_owner_created ON jobs (json_extract(data, '$.owner'), created_at, id);
            CREATE TABLE idempotency_keys (owner TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,
                                           job_id TEXT, PRIMARY KEY (owner, key));
        """)
        for job in (make_job("queued", owner="key_a"), make_job("running", created_at=999.0, status="in_progress")):
            conn.execute("INSERT INTO jobs VALUES (?, ?, ?, ?)", (job.id, job.status.value, job.created_at,
                                                                  job.model_dump_json()))
    conn.close()
    with SqliteJobStore(path) as store:
        assert [j.id for j in store.list(owner="key_a")[0]] == ["queued"]
        assert [t.job.id for t in store.take_expired("r1", LEASE_S)] == ["running"]  # no lease: expired
        assert claim(store) == "queued"


def test_interactive_jobs_go_before_batch_ones_and_re_runs_before_both(store: JobStore):
    cut = [Attempt(number=1, started_at=1.0, ended_at=2.0, error=JobError(code=ErrorCode.INTERRUPTED, message="x"))]
    paused = [Attempt(number=1, started_at=1.0, ended_at=2.0, error=JobError(code=ErrorCode.PREEMPTED, message="x"))]
    store.add(make_job("batch-old", created_at=1.0, priority="batch"))
    store.add(make_job("batch-preempted", created_at=2.0, priority="batch", attempts=paused))
    store.add(make_job("interactive", created_at=3.0, priority="interactive"))
    store.add(make_job("batch-rerun", created_at=4.0, priority="batch", attempts=cut))
    order = ["batch-rerun", "interactive", "batch-old", "batch-preempted"]
    # a preempted job is no re-run: it waits in its class, oldest first there
    assert [store.queue_position(j, DELAY_S, now=10.0) for j in order] == [1, 2, 3, 4]
    assert [claim(store, now=10.0) for _ in order] == order


def test_fair_sharing_between_two_batch_keys_is_by_gpu_seconds(store: JobStore):
    # key A queued a backlog of big videos first; key B's small previews come later
    for i in range(5):
        store.add(make_job(f"a{i}", created_at=1.0 + i, owner="key_a", estimated_gpu_s=100.0))
    for i in range(6):
        store.add(make_job(f"b{i}", created_at=10.0 + i, owner="key_b", estimated_gpu_s=25.0))
    claims = [claim(store, now=20.0) for _ in range(11)]
    # B never waits for A's whole backlog: each key's next job has the smaller start tag (running + queued before)
    assert claims[:6] == ["a0", "b0", "b1", "b2", "b3", "a1"]
    assert claims.index("b5") < claims.index("a4")
    assert sorted(claims) == sorted(f"a{i}" for i in range(5)) + sorted(f"b{i}" for i in range(6))


def test_a_heavier_key_gets_more_and_queue_positions_follow_the_claims(store: JobStore):
    for i in range(4):
        store.add(make_job(f"a{i}", created_at=1.0 + i, owner="key_a", estimated_gpu_s=10.0, share_weight=3.0))
        store.add(make_job(f"b{i}", created_at=1.5 + i, owner="key_b", estimated_gpu_s=10.0))
    positions = {j.id: store.queue_position(j.id, DELAY_S, now=20.0) for j in store.in_status(JobStatus.QUEUED)}
    claims = [claim(store, now=20.0) for _ in range(8)]
    assert sorted(positions, key=positions.get) == claims
    assert claims[:6] == ["a0", "b0", "a1", "a2", "b1", "a3"]  # weight 3: three of A's for each of B's


def test_a_queue_place_sums_the_estimated_cost_up_to_the_job(store: JobStore):
    store.add(make_job("big", created_at=1.0, estimated_gpu_s=100.0))
    store.add(make_job("small", created_at=2.0, estimated_gpu_s=5.0))
    assert store.queue_place("small", DELAY_S, now=10.0) == (2, 105.0)
    assert store.queue_place("big", DELAY_S, now=10.0) == (1, 100.0)
    claim(store, now=10.0)
    assert store.queue_place("big", DELAY_S, now=10.0) is None
