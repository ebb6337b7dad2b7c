"""Chaos load test: N jobs at concurrency C while a fault injector kills, one at a time and mid-job, a DiT gang
worker, the Denoiser replica, the Vae replica, the TextEncoder replica and the ingress replica.

    python benchmarks/load_test.py --jobs 200 --concurrency 16 --out benchmarks/results/chaos_tiny_cpu.json
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --jobs 40 --faults worker,ingress  # a running app

Without --url it starts a local Ray with fake GPUs and the app on the tiny preset (loopback only). With --url it
attaches to the app's Ray (RAY_ADDRESS) to find the actors to kill. Every accepted job is followed to its end;
a job that is not terminal when the run ends counts as lost. Writes JSON + markdown.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import ray

from tables import markdown_table

logger = logging.getLogger("load_test")

JOB = dict(size="64x64", num_frames=9, num_inference_steps=12)
TERMINAL = {"completed", "failed", "cancelled"}
POLL_S = 0.25


@dataclass(frozen=True)
class Fault:
    name: str
    actor: str  # a substring of the named actor to kill
    phase: str  # kill while some job is in this phase: "mid-job" for the stage that does the work


FAULTS = {
    "worker": Fault("DiT gang worker (rank 1)", "DiTWorker:", "denoising"),
    "denoiser": Fault("Denoiser replica", "#Denoiser#", "denoising"),
    "vae": Fault("Vae replica", "#Vae#", "decoding"),
    "text_encoder": Fault("TextEncoder replica", "#TextEncoder#", "encoding_text"),
    "ingress": Fault("ingress replica", "#VideoIngress#", "denoising"),
}


@dataclass
class FaultRecord:
    fault: str
    at_s: float  # since the run started
    jobs_running: list[str]
    recovered_s: float | None = None  # from the kill to the next job completed
    outcomes: dict[str, str] = field(default_factory=dict)  # job id -> final status of the jobs running at the kill
    attempts: dict[str, int] = field(default_factory=dict)


@dataclass
class JobRecord:
    id: str
    submitted_at: float
    status: str = "queued"
    ended_at: float | None = None
    attempts: int = 0

    @property
    def latency_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.submitted_at


class Chaos:
    """Keeps `concurrency` jobs in flight against `url` and injects the faults one at a time."""

    def __init__(self, url: str, app: str, jobs: int, concurrency: int, faults: list[str], timeout_s: float) -> None:
        self.url, self.app = url.rstrip("/"), app
        self.total, self.concurrency, self.faults = jobs, concurrency, [FAULTS[name] for name in faults]
        self.deadline = time.monotonic() + timeout_s
        self.start = time.monotonic()
        self.jobs: dict[str, JobRecord] = {}
        self.unaccepted = 0
        self.records: list[FaultRecord] = []
        self._lock = threading.Lock()
        self._completed = threading.Condition(self._lock)
        self._seeds = itertools.count()

    def run(self) -> dict:
        with ThreadPoolExecutor(self.concurrency + 1) as pool:
            pool.submit(self._inject)
            list(pool.map(lambda _: self._one_job(), range(self.total)))
        for record in self.records:
            record.outcomes = {job_id: self.jobs[job_id].status for job_id in record.jobs_running}
            record.attempts = {job_id: self.jobs[job_id].attempts for job_id in record.jobs_running}
        return self.report()

    def _one_job(self) -> None:
        seed = next(self._seeds)
        with httpx.Client(timeout=30) as http:
            job_id = self._submit(http, seed)
            if job_id is None:
                return
            record = self.jobs[job_id]
            while time.monotonic() < self.deadline:
                job = _tolerant(lambda: http.get(f"{self.url}/v1/videos/{job_id}"))
                if job is not None and job["status"] in TERMINAL:
                    with self._completed:
                        record.status, record.ended_at = job["status"], time.monotonic()
                        record.attempts = len(job.get("attempts", []))
                        self._completed.notify_all()
                    return
                time.sleep(POLL_S)

    def _submit(self, http: httpx.Client, seed: int) -> str | None:
        """The accepted job's id; retried while the ingress is away or the queue is full."""
        while time.monotonic() < self.deadline:
            submitted_at = time.monotonic()
            try:
                response = http.post(f"{self.url}/v1/videos", json={"prompt": f"chaos {seed}", "seed": seed, **JOB})
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 202:
                job_id = response.json()["id"]
                with self._lock:
                    self.jobs[job_id] = JobRecord(job_id, submitted_at)
                return job_id
            with self._lock:
                self.unaccepted += 1
            retry_after = float(response.headers.get("Retry-After", 1)) if response is not None else 1.0
            time.sleep(min(retry_after, 5.0))
        return None

    def _inject(self) -> None:
        """Each fault after an equal share of the jobs has completed, while a job is in the fault's phase."""
        for index, fault in enumerate(self.faults):
            share = self.total * (index + 1) // (len(self.faults) + 1)
            with self._completed:
                if not self._completed.wait_for(lambda: self._done() >= share, timeout=self._left()):
                    return
            with httpx.Client(timeout=10) as http:
                running = self._wait_for_phase(http, fault.phase)
            victim = _named_actor(fault.actor, rank_one=fault.actor == "DiTWorker:")
            if victim is None:
                logger.warning("no actor matches %s; fault skipped", fault.actor)
                continue
            killed_at = time.monotonic()
            ray.kill(victim, no_restart=fault.actor != "DiTWorker:")
            logger.info("killed the %s with %d jobs running", fault.name, len(running))
            record = FaultRecord(fault.name, round(killed_at - self.start, 1), running)
            self.records.append(record)
            done_before = self._done()
            with self._completed:
                if self._completed.wait_for(lambda: self._done() > done_before, timeout=self._left()):
                    record.recovered_s = round(time.monotonic() - killed_at, 1)

    def _wait_for_phase(self, http: httpx.Client, phase: str) -> list[str]:
        """Running job ids once some job is in `phase` (or after 30 s: then kill anyway, mid-load)."""
        give_up = time.monotonic() + 30
        while True:
            page = _tolerant(lambda: http.get(f"{self.url}/v1/videos", params={"limit": 100})) or {"data": []}
            running = [job for job in page["data"] if job["status"] == "in_progress"]
            if any(job["phase"] == phase for job in running) or time.monotonic() > give_up:
                return [job["id"] for job in running]
            time.sleep(0.05)

    def _done(self) -> int:
        return sum(record.ended_at is not None for record in self.jobs.values())

    def _left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def report(self) -> dict:
        latencies = sorted(r.latency_s for r in self.jobs.values() if r.status == "completed")
        elapsed = max((r.ended_at for r in self.jobs.values() if r.ended_at), default=time.monotonic()) - self.start
        statuses = [r.status for r in self.jobs.values()]
        return {
            "submitted": len(self.jobs),
            "completed": statuses.count("completed"),
            "failed": statuses.count("failed"),
            "cancelled": statuses.count("cancelled"),
            "lost": sum(s not in TERMINAL for s in statuses),
            "submits_refused_or_unreachable": self.unaccepted,
            "reruns": sum(max(r.attempts - 1, 0) for r in self.jobs.values()),
            "p50_latency_s": round(statistics.median(latencies), 2) if latencies else None,
            "p95_latency_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2) if latencies else None,
            "jobs_per_minute": round(60 * len(latencies) / elapsed, 1) if elapsed > 0 else None,
            "faults": [asdict(record) for record in self.records],
        }


def _tolerant(request: Callable[[], httpx.Response]) -> dict | None:
    """The JSON of a 200 answer; None while the ingress is away or restarting."""
    try:
        response = request()
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _named_actor(contains: str, rank_one: bool):
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if contains in actor["name"] and (not rank_one or actor["name"].endswith(":1")):
            return ray.get_actor(actor["name"], namespace=actor["namespace"])
    return None


def markdown(report: dict, command: str) -> str:
    overall = {key: value for key, value in report.items() if key != "faults"}
    faults = [{"fault": f["fault"], "at (s)": f["at_s"], "jobs running": len(f["jobs_running"]),
               "how they ended": ", ".join(f"{s}: {list(f['outcomes'].values()).count(s)}"
                                           for s in sorted(set(f["outcomes"].values()))) or "-",
               "runs used (max)": max(f["attempts"].values(), default=0),
               "took work again after (s)": f["recovered_s"]} for f in report["faults"]]
    return (f"# Chaos load test\n\n`{command}`\n\n## Per fault\n\n{markdown_table(faults)}\n\n"
            f"## Overall\n\n{markdown_table([overall])}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running app (default: start one on a local Ray, tiny preset)")
    parser.add_argument("--app", default="skyreels")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, from {', '.join(FAULTS)}")
    parser.add_argument("--timeout_s", type=float, default=1200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/chaos_tiny_cpu.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    url = args.url or _start_local_app()
    if args.url:
        ray.init(address="auto", logging_level=logging.WARNING)
    report = Chaos(url, args.app, args.jobs, args.concurrency, [f for f in args.faults.split(",") if f],
                   args.timeout_s).run()
    command = "python " + " ".join(sys.argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, **report}, indent=2))
    args.out.with_suffix(".md").write_text(markdown(report, command))
    print(markdown(report, command))
    return 0 if report["failed"] == report["lost"] == 0 else 1


def _start_local_app() -> str:
    from serve_app.app import AppConfig
    from serve_app.launch import start_local

    data = Path(tempfile.mkdtemp(prefix="skyreels-chaos-"))
    config = AppConfig(gpus_per_replica=2, max_queued_jobs=256, max_attempts=4,
                       database_path=str(data / "jobs.sqlite3"), artifact_url=str(data / "artifacts"))
    return start_local(config)


if __name__ == "__main__":
    sys.exit(main())
