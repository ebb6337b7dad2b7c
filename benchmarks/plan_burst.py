"""`skyreels plan --config cluster/serve_config.sim.yaml --burst N` against the real app on this machine.

    python benchmarks/plan_burst.py            # about 3 minutes on 2 cores

Deploys cluster/serve_config.sim.yaml on a local Ray (as `serve run` does), measures what Ray and Serve add to a
lone job's stage calls here (from its trace), then submits N jobs at once and times the makespan (first submit to
last completion, from the store's records) and how long the gangs the autoscaler asked for took to start (waiting
for one that is still starting when the burst ends). The planner predicts the same config with those two
measurements. Writes benchmarks/results/plan_burst.{json,md}; the measured figures are the ones
skyreels/planner/serve_config.py keeps as SIM_LOCAL_*.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import ray
import yaml
from bench_cluster import Layout, drain
from job_breakdown import held_seconds, spans_by_job
from planner_validation import call_seconds, orchestration_of, stored_jobs
from ray import serve
from sim_cluster import Sampler, deploy, replicas

from serve_app.client import VideoClient
from serve_app.launch import wait_ready
from skyreels.parallel.group import free_port
from skyreels.planner.model import Arrival, ServedAppModel
from skyreels.planner.serve_config import read
from skyreels.sim.profile import WORKLOAD, WORKLOAD_STEPS
from skyreels.sim.source import SimOptions

logger = logging.getLogger("plan_burst")
ROOT = Path(__file__).resolve().parents[1]
SIM_CONFIG = ROOT / "cluster" / "serve_config.sim.yaml"


def local_config(root: Path, port: int) -> dict:
    config = yaml.safe_load(SIM_CONFIG.read_text())
    (app,) = config["applications"]
    app["args"] |= {"database_path": str(root / "jobs.sqlite3"), "artifact_url": str(root / "artifacts"),
                    "tracing": {"exporter": "file", "file_dir": str(root / "spans")}}
    return config | {"http_options": {"host": "127.0.0.1", "port": port}}


class GangStarts(Sampler):
    """Each new Denoiser replica's seconds from its appearance (STARTING) to RUNNING, sampled every 0.2 s. The
    replicas run in the order they appeared (paired first in, first out)."""

    period_s = 0.2

    def __init__(self, app: str) -> None:
        self.app, self.seconds = app, []
        self._appeared: list[float] = []  # when each replica still starting appeared
        self._running: int | None = None

    def sample(self) -> None:
        states = replicas(self.app)["Denoiser"]
        starting, running = states.get("STARTING", 0), states.get("RUNNING", 0)
        if self._running is None:
            self._running = running
        now, came_up = time.monotonic(), max(0, running - self._running)
        self._appeared += [now] * max(0, starting + came_up - len(self._appeared))
        for _ in range(min(came_up, len(self._appeared))):
            self.seconds.append(now - self._appeared.pop(0))
        del self._appeared[starting:]  # stopped before they ran (scaled down while starting)
        self._running = running

    def wait_for_start(self, timeout_s: float) -> None:
        """Until every replica that is starting runs (or `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while self._appeared and time.monotonic() < deadline:
            time.sleep(self.period_s)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=6)
    parser.add_argument("--lone_jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plan_burst.json")
    args = parser.parse_args()
    root, port = Path(tempfile.mkdtemp(prefix="plan-burst-")), free_port()
    config = local_config(root, port)
    app_args = config["applications"][0]["args"]
    options = SimOptions.parse(app_args["model"])
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    deploy(config)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout_s=300)
    lone = Layout("sim", app_args["gpus_per_replica"], 1, app_args["decode_on"], 0, 1, "serve_config.sim.yaml")
    with VideoClient(url, timeout_s=120) as client, GangStarts("skyreels") as starts:
        drain(client, [client.submit("warm-up", seed=0)["id"]])
        lone_ids = [drain(client, [client.submit(f"lone job {i}", seed=i)["id"]])[0]["id"]
                    for i in range(args.lone_jobs)]
        seconds = call_seconds(spans_by_job(root / "spans"), lone_ids, lone)
        held = held_seconds(lone.gang, lone.decode_on, options.timings, options.time_factor)
        orchestration = orchestration_of(seconds, held, seconds)
        submitted = time.time()
        ids = [client.submit(f"burst job {i}", seed=i)["id"] for i in range(args.burst)]
        drain(client, ids, timeout_s=600)
        starts.wait_for_start(timeout_s=180)  # a gang the burst asked for may come up after it
    serve.shutdown()
    ray.shutdown()
    jobs = [job for job in stored_jobs(root / "jobs.sqlite3") if job["id"] in ids]
    makespan = max(job["completed_at"] for job in jobs) - submitted
    gang_start_s = sum(starts.seconds) / len(starts.seconds) if starts.seconds else None
    configured = read(SIM_CONFIG, orchestration, gang_start_s)
    outcome = ServedAppModel(configured.app).run([Arrival(0.0, WORKLOAD, WORKLOAD_STEPS)
                                                  for _ in range(args.burst)])
    predicted = max(job.completed_s for job in outcome.completed) * options.time_factor
    error = abs(predicted - makespan) / makespan
    report = {"command": "python " + " ".join(sys.argv), "host": platform.node(), "ray": ray.__version__,
              "config": str(SIM_CONFIG.relative_to(ROOT)), "burst": args.burst,
              "completed": sum(job["status"] == "completed" for job in jobs),
              "orchestration_wall_s": asdict(orchestration), "gang_start_wall_s": starts.seconds,
              "measured_makespan_s": makespan, "predicted_makespan_s": predicted, "error": error}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join([
        f"# skyreels plan --config {report['config']} --burst {args.burst}, against the app on this machine", "",
        f"`{report['command']}` (Ray {ray.__version__}, 2-core VM). Wall seconds at the config's time factor "
        f"({options.time_factor:g}).", "",
        f"- measured makespan: {makespan:.1f} s ({report['completed']} of {args.burst} completed)",
        f"- predicted makespan: {predicted:.1f} s", f"- error: {error:.1%}",
        f"- orchestration per lone job (wall s, beyond the sim's holds): "
        f"{ {k: round(v, 3) for k, v in asdict(orchestration).items()} }",
        f"- a new Denoiser replica's start (wall s): {[round(s, 1) for s in starts.seconds]}", ""]))
    logger.info("measured %.1f s, predicted %.1f s (error %.1f%%)", makespan, predicted, 100 * error)


if __name__ == "__main__":
    main()
