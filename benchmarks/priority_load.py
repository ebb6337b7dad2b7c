"""Priorities under load: a batch backlog from one API key, then interactive jobs from another at a steady rate,
with preemption at step boundaries on and off, on the `sim` preset (the real app, stages that take the time the
real ones take on an A800, scaled by --time_factor).

    python benchmarks/priority_load.py --batch 40 --interactive 8 --out benchmarks/results/priority_sim.json

Each mode starts a local Ray and the app (one gang of 1), submits `--batch` default-size videos (544x960, 97
frames, 30 steps) as key B, then `--interactive` smaller ones (544x960, 49 frames, 30 steps) as key A, one every
`--interval_s`, and follows every job to its end. It records each job from the job store (sub-second times): the
interactive jobs' wait before their run began and their latency, the batch throughput (batch jobs per second from
the first start to the last end), the preemptions, that every job completed, and that each video is the same in
both modes (the same prompts and seeds); the queue over time goes to a PNG. Writes JSON, markdown and the PNG.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray
from ray import serve

from serve_app.app import AppConfig
from serve_app.auth import AccessConfig, key_hash, owner_id
from serve_app.client import VideoClient
from serve_app.launch import start_local
from serve_app.priorities import KeyShare, Priority
from serve_app.schemas import Job, JobStatus
from serve_app.store import SqliteJobStore
from tables import markdown_table

logger = logging.getLogger("priority_load")

KEY_A, KEY_B = "interactive-tenant-key", "batch-tenant-key"
BATCH = dict(size="960x544", num_frames=97, num_inference_steps=30)
INTERACTIVE = dict(size="960x544", num_frames=49, num_inference_steps=30)
SAMPLE_S = 0.25


@dataclass
class Mode:
    name: str
    preempt_after_s: float | None
    interactive_wait_s: list[float] = field(default_factory=list)  # submit -> its (first) run began
    interactive_latency_s: list[float] = field(default_factory=list)  # submit -> completed
    batch_seconds: float = 0.0  # first batch start -> last batch end
    batch_per_minute: float = 0.0
    makespan_s: float = 0.0
    preemptions: int = 0  # pauses after a step (counted on the jobs)
    preempted_runs: int = 0  # runs ended `preempted` (also those sent back before their first step)
    completed: int = 0
    lost: int = 0  # accepted jobs that did not complete
    videos: dict[str, str] = field(default_factory=dict)  # prompt -> sha256 of the mp4
    timeline: list[tuple[float, int, int, int, int]] = field(default_factory=list)  # t, queued b/i, running b/i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--interactive", type=int, default=8)
    parser.add_argument("--interval_s", type=float, default=6.0, help="between two interactive submits")
    parser.add_argument("--start_after_s", type=float, default=10.0, help="first interactive submit, after the "
                        "batch backlog")
    parser.add_argument("--time_factor", type=float, default=0.005)
    parser.add_argument("--preempt_after_s", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/priority_sim.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    modes = [Mode("preemption off", None), Mode("preemption on", args.preempt_after_s)]
    for mode in modes:
        run_mode(mode, args)
    report = summary(modes, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": report,
                                    "modes": [asdict(mode) for mode in modes]}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report, args))
    chart(modes, args.out.with_suffix(".png"))
    logger.info("wrote %s (+ .md, .png)", args.out)


def run_mode(mode: Mode, args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="priority-load-"))
    database = data / "jobs.sqlite3"
    sim = f"sim?time_factor={args.time_factor}"
    config = AppConfig(
        model=sim, i2v_model=sim, device="cpu", dtype="bfloat16", gpus_per_replica=1, worker_cpus=0.1,
        database_path=str(database), artifact_url=str(data / "artifacts"), max_queued_jobs=256,
        max_running_jobs=2, job_heartbeat_s=0.2, job_lease_s=5.0, queue_poll_s=0.1,
        preempt_after_s=mode.preempt_after_s, max_preemptions=3,
        access=AccessConfig(api_keys=[KEY_A, KEY_B], max_jobs_in_flight=None, max_submits_per_minute=None,
                            keys={owner_id(key_hash(KEY_B)): KeyShare(max_priority=Priority.BATCH)}))
    url = start_local(config, port=8017)
    store = SqliteJobStore(database)
    stop = threading.Event()
    started = time.time()
    sampler = threading.Thread(target=sample, args=(store, mode, started, stop), daemon=True)
    sampler.start()
    try:
        with VideoClient(url, api_key=KEY_B) as batch, VideoClient(url, api_key=KEY_A) as interactive:
            ids = [batch.submit(f"backlog {i}", seed=i, priority="batch", **BATCH)["id"] for i in range(args.batch)]
            for i in range(args.interactive):
                time.sleep(max(0.0, started + args.start_after_s + i * args.interval_s - time.time()))
                ids.append(interactive.submit(f"watched {i}", seed=1000 + i, priority="interactive",
                                              **INTERACTIVE)["id"])
            while not all(job.status.is_terminal for job in store.get_many(ids)):
                time.sleep(SAMPLE_S)
            for job in store.get_many(ids):
                client = batch if job.priority is Priority.BATCH else interactive
                if job.status is JobStatus.COMPLETED:
                    mode.videos[job.prompt] = hashlib.sha256(client.content(job.id)).hexdigest()
    finally:
        stop.set()
        sampler.join()
        record(mode, store.in_status())
        store.close()
        serve.shutdown()
        ray.shutdown()


def sample(store: SqliteJobStore, mode: Mode, started: float, stop: threading.Event) -> None:
    """The queue over time: queued and running jobs of each class."""
    while not stop.wait(SAMPLE_S):
        jobs = store.in_status(JobStatus.QUEUED, JobStatus.IN_PROGRESS)
        counts = [sum(j.status is status and j.priority is priority for j in jobs)
                  for status in (JobStatus.QUEUED, JobStatus.IN_PROGRESS) for priority in (Priority.BATCH,
                                                                                          Priority.INTERACTIVE)]
        mode.timeline.append((round(time.time() - started, 2), *counts))


def record(mode: Mode, jobs: list[Job]) -> None:
    batch = [j for j in jobs if j.priority is Priority.BATCH]
    interactive = [j for j in jobs if j.priority is Priority.INTERACTIVE]
    mode.completed = sum(j.status is JobStatus.COMPLETED for j in jobs)
    mode.lost = len(jobs) - mode.completed
    mode.preemptions = sum(j.preemptions for j in jobs)
    mode.preempted_runs = sum(a.error is not None and a.error.code.value == "preempted" for j in jobs
                              for a in j.attempts)
    mode.interactive_wait_s = [round(j.attempts[0].started_at - j.created_at, 3) for j in interactive if j.attempts]
    mode.interactive_latency_s = [round(j.completed_at - j.created_at, 3) for j in interactive if j.completed_at]
    done = [j for j in batch if j.completed_at is not None]
    if done:
        mode.batch_seconds = max(j.completed_at for j in done) - min(j.started_at for j in done)
        mode.batch_per_minute = 60 * len(done) / mode.batch_seconds
    mode.makespan_s = max(j.completed_at for j in jobs if j.completed_at) - min(j.created_at for j in jobs)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def summary(modes: list[Mode], args: argparse.Namespace) -> dict:
    off, on = modes
    rows = {}
    for mode in modes:
        rows[mode.name] = {
            "interactive wait p50 (s)": round(statistics.median(mode.interactive_wait_s), 2),
            "interactive wait p95 (s)": round(p95(mode.interactive_wait_s), 2),
            "interactive latency p50 (s)": round(statistics.median(mode.interactive_latency_s), 2),
            "interactive latency p95 (s)": round(p95(mode.interactive_latency_s), 2),
            "batch jobs/min": round(mode.batch_per_minute, 2),
            "makespan (s)": round(mode.makespan_s, 1),
            "pauses after a step": mode.preemptions,
            "runs sent back": mode.preempted_runs,
            "completed": mode.completed,
            "lost": mode.lost,
        }
    same = sorted(off.videos) == sorted(on.videos) and all(off.videos[p] == on.videos[p] for p in off.videos)
    return {"modes": rows,
            "batch throughput lost to preemption (%)": round(100 * (1 - on.batch_per_minute / off.batch_per_minute),
                                                             2),
            "interactive p95 latency, on / off": round(rows[on.name]["interactive latency p95 (s)"]
                                                       / rows[off.name]["interactive latency p95 (s)"], 3),
            "every video the same in both modes": same,
            "one A800 second lasts (s)": args.time_factor}


def markdown(report: dict, args: argparse.Namespace) -> str:
    modes = report["modes"]
    names = list(modes)
    lines = [f"# Priorities under load (sim preset, time factor {args.time_factor})", "",
             f"{args.batch} batch videos (544x960, 97 frames, 30 steps) from key B, then {args.interactive} "
             f"interactive ones (544x960, 49 frames, 30 steps) from key A every {args.interval_s} s from "
             f"t = {args.start_after_s} s; one gang of 1 sim A800, max_running_jobs 2, preempt_after_s "
             f"{args.preempt_after_s}. Times in sim seconds (1 A800 second = {args.time_factor} s here).", "",
             markdown_table([{"": metric, **{name: modes[name][metric] for name in names}}
                             for metric in modes[names[0]]]), "",
             f"- batch throughput lost to preemption: {report['batch throughput lost to preemption (%)']} %",
             f"- interactive p95 latency with preemption / without: {report['interactive p95 latency, on / off']}",
             f"- every video the same in both modes (sha256 of the mp4 by prompt and seed): "
             f"{report['every video the same in both modes']}", "",
             "The queue over time: priority_sim.png.", ""]
    return "\n".join(lines)


def chart(modes: list[Mode], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(modes), 1, figsize=(9, 6), sharex=True)
    for axis, mode in zip(axes, modes, strict=True):
        t, queued_b, queued_i, running_b, running_i = zip(*mode.timeline, strict=True)
        axis.stackplot(t, queued_b, queued_i, labels=["batch queued", "interactive queued"],
                       colors=["#9bb7d4", "#f4a261"], alpha=0.8)
        axis.step(t, running_i, where="post", color="#e76f51", label="interactive running")
        axis.step(t, running_b, where="post", color="#264653", label="batch running")
        axis.set_title(mode.name)
        axis.set_ylabel("jobs")
        axis.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds since the batch backlog was submitted")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
