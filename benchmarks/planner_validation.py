"""The planner's model against the real app: each layout on the fake-GPU sim cluster, under the same arrivals as
the model's run, and the error of the model's throughput, p50 and p95.

    python benchmarks/planner_validation.py                  # 3 layouts x 2 rates, 24 jobs a row: ~25 min
    python benchmarks/planner_validation.py --layouts mono-8 --rates 18 --jobs 10

Per layout: the app (cluster/serve_config.gpu8.yaml's, on the `sim` model source, replicas fixed as
benchmarks/bench_cluster.py lays them out, tracing to files) on one fake 8-GPU node; the traces of two lone jobs
measure what Ray and Serve add to each stage call on this machine and the part of it that holds the replica (the
model's Orchestration, in wall seconds, divided by the time factor); then at
each rate, jobs arrive at seeded Poisson times (sim time) and the queue drains. The model runs the same arrival
times through the same layout. Writes benchmarks/results/planner_validation.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ray
import yaml
from bench_cluster import APP, GPU8, LAYOUTS, Layout, _coarse_profile, drain
from job_breakdown import spans_by_job
from ray import serve
from sim_cluster import ClusterSpec, FakeGpuCluster, deploy

from serve_app.client import VideoClient
from serve_app.launch import wait_ready
from skyreels.parallel.group import free_port
from skyreels.planner.layouts import Layout as PlannedLayout
from skyreels.planner.layouts import StagePlan
from skyreels.planner.model import Arrival, Orchestration, ServedAppModel, quantile
from skyreels.sim.profile import WORKLOAD, WORKLOAD_STEPS, SimProfile, mesh_of
from skyreels.sim.source import SimOptions

logger = logging.getLogger("planner_validation")

ROOT = Path(__file__).resolve().parents[1]
GPU_TYPE = "A800-80GB"  # the sim profile's (published A800 figures)


@dataclass(frozen=True)
class Row:
    layout: str
    rate_per_hour: float
    jobs: int
    measured: dict[str, float]  # videos_per_hour, p50_s, p95_s (real-time scale)
    predicted: dict[str, float]

    @property
    def errors(self) -> dict[str, float]:
        return {key: abs(self.predicted[key] - value) / value for key, value in self.measured.items()}


def planned(layout: Layout) -> PlannedLayout:
    """bench_cluster's layout as the planner's."""
    return PlannedLayout(layout.name, GPU_TYPE, layout.gang, layout.gangs, layout.decode_on,
                         text=StagePlan(1, "own" if layout.text_gpus else "beside"),
                         vae=StagePlan(max(layout.vaes, 1), "own" if layout.vaes else "beside"))


def figures(created: list[float], completed: list[float], factor: float) -> dict[str, float]:
    """Throughput from the first arrival to the last completion, latency quantiles: at real-time scale."""
    latency = [(end - start) / factor for start, end in zip(created, completed, strict=True)]
    window = (max(completed) - min(created)) / factor
    return {"videos_per_hour": len(completed) / window * 3600, "p50_s": quantile(latency, 0.5),
            "p95_s": quantile(latency, 0.95)}


def held_seconds(layout: Layout, profile: SimProfile, factor: float) -> dict[str, float]:
    """What the sim's stages hold for one job of the workload on this layout (wall seconds)."""
    cfg, ulysses = mesh_of(layout.gang)
    return {"text": profile.text_encode_seconds / 2 * factor,
            "denoise": WORKLOAD_STEPS * profile.step_seconds(WORKLOAD, cfg, ulysses) * factor,
            "decode": profile.decode_seconds(WORKLOAD, layout.gang if layout.decode_on == "gang" else 1) * factor}


def measure_orchestration(client: VideoClient, layout: Layout, profile: SimProfile, factor: float, steps: int,
                          lone_jobs: int, span_dir: Path) -> Orchestration:
    """Lone jobs' traces: each stage call's seconds beyond what the sim holds, in wall seconds (averaged), and the
    part of it spent on the replica (its server span), which holds the replica from other jobs."""
    held = held_seconds(layout, profile, factor)
    ids = [drain(client, [client.submit(f"lone job {i}", seed=i, num_inference_steps=steps)["id"]])[0]["id"]
           for i in range(lone_jobs)]
    traces = spans_by_job(span_dir)
    decode_server = "Denoiser.decode_to_storage" if layout.decode_on == "gang" else "Vae.decode_to_storage"
    calls = {"text": ("text_encode", "TextEncoder.encode"), "gang": ("denoise", "Denoiser.denoise"),
             "decode": ("decode", decode_server)}
    samples: dict[str, list[float]] = defaultdict(list)
    for job_id in ids:
        spans = traces[job_id]

        def seconds(name: str, kind: str) -> float:
            return sum(s["seconds"] for s in spans if s["name"] == name and s["kind"].endswith(kind))

        hold = {"text": held["text"], "gang": held["denoise"], "decode": held["decode"]}
        for part, (client_name, server_name) in calls.items():
            samples[part].append(seconds(client_name, "CLIENT") - hold[part])
            samples[f"{part}_held"].append(seconds(server_name, "SERVER") - hold[part])
        samples["job"].append(seconds("job", "INTERNAL") - sum(seconds(c, "CLIENT") for c, _ in calls.values()))
    wall = {name: max(0.0, statistics.fmean(values)) for name, values in samples.items()}
    logger.info("%s: orchestration per lone job, wall s: %s", layout.name, {k: round(v, 3) for k, v in wall.items()})
    return Orchestration(text_s=wall["text"], gang_s=wall["gang"], gang_held_s=min(wall["gang_held"], wall["gang"]),
                         decode_s=wall["decode"], decode_held_s=min(wall["decode_held"], wall["decode"]),
                         per_job_s=wall["job"])


def stored_jobs(database: Path, ids: list[str]) -> list[dict]:
    """The jobs' records as the store has them: times to the microsecond (the API gives whole seconds, 20 s of
    real time at a time factor of 0.05)."""
    with closing(sqlite3.connect(database)) as connection:
        rows = connection.execute(f"SELECT data FROM jobs WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall()
    return [json.loads(data) for (data,) in rows]


def arrivals(rate_per_hour: float, jobs: int, seed: int) -> list[float]:
    """Seeded Poisson arrival times at real-time scale, the first at 0."""
    rng, at, times = random.Random(seed), 0.0, []
    for _ in range(jobs):
        times.append(at)
        at += rng.expovariate(rate_per_hour / 3600)
    return times


def submit_at(client: VideoClient, times: list[float], factor: float, steps: int, tag: str) -> list[str]:
    start, ids = time.monotonic(), []
    for i, at in enumerate(times):
        time.sleep(max(0.0, start + at * factor - time.monotonic()))
        ids.append(client.submit(f"{tag} job {i}", seed=i, num_inference_steps=steps)["id"])
    return ids


def predict(layout: Layout, profile: SimProfile, orchestration_wall: Orchestration, factor: float,
            times: list[float], max_running_jobs: int) -> dict[str, float]:
    app = planned(layout).modelled({GPU_TYPE: profile}, orchestration_wall.scaled(1 / factor), sim_stand_ins=True)
    app = replace(app, max_running_jobs=max_running_jobs)  # the deployed config's
    outcome = ServedAppModel(app).run([Arrival(at, WORKLOAD, WORKLOAD_STEPS) for at in times])
    done = outcome.completed
    return figures([j.arrival.at_s for j in done], [j.completed_s for j in done], 1.0)


def run_layout(layout: Layout, args: argparse.Namespace, options: SimOptions, root: Path, port: int) -> list[Row]:
    base = yaml.safe_load(GPU8.read_text())
    config = layout.config(base, root / layout.name, port, options)
    span_dir = root / layout.name / "spans"
    config["applications"][0]["args"]["tracing"] = {"exporter": "file", "file_dir": str(span_dir)}
    deploy(config)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout_s=300)
    rows = []
    with VideoClient(url, timeout_s=120) as client:
        drain(client, [client.submit("warm-up", seed=0, num_inference_steps=args.steps)["id"]])
        orchestration = measure_orchestration(client, layout, args.timings, options.time_factor, args.steps,
                                              args.lone_jobs, span_dir)
        for rate in args.rates:
            times = arrivals(rate, args.jobs, args.seed)
            ids = submit_at(client, times, options.time_factor, args.steps, f"{layout.name} at {rate}/h")
            drain(client, ids, timeout_s=args.drain_timeout)
            jobs = [job for job in stored_jobs(root / layout.name / "jobs.sqlite3", ids) if job["status"] == "completed"]
            measured = figures([j["created_at"] for j in jobs], [j["completed_at"] for j in jobs],
                               options.time_factor)
            row = Row(layout.name, rate, len(jobs), measured,
                      predict(layout, args.timings, orchestration, options.time_factor, times,
                              config["applications"][0]["args"]["max_running_jobs"]))
            logger.info("%s at %g/h: measured %s predicted %s", layout.name, rate,
                        {k: round(v, 1) for k, v in row.measured.items()},
                        {k: round(v, 1) for k, v in row.predicted.items()})
            rows.append(row)
            if len(jobs) < len(ids):
                logger.warning("%s at %g/h: %d of %d jobs completed", layout.name, rate, len(jobs), len(ids))
    serve.delete(APP)
    return rows


def write(rows: list[Row], args: argparse.Namespace, seconds: float) -> None:
    out = args.out
    worst = max((error for row in rows for error in row.errors.values()), default=float("nan"))
    report = {"command": "python " + " ".join(sys.argv), "host": platform.node(), "ray": ray.__version__,
              "time_factor": args.time_factor, "sim_steps": args.steps, "jobs_per_row": args.jobs,
              "wall_seconds": round(seconds), "max_error": worst,
              "rows": [asdict(row) | {"errors": row.errors} for row in rows]}
    out.write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# The planner's model against the real app on the sim cluster", "",
             f"`{report['command']}` ({report['wall_seconds']} s wall, Ray {ray.__version__}). Each row: "
             f"{args.jobs} jobs of 544x960x97, 30 steps (as {args.steps} sim steps) at seeded Poisson times, "
             f"time factor {args.time_factor}, on one fake 8-GPU node; the model (skyreels/planner/model.py) "
             "runs the same arrival times through the same layout, with the orchestration that two lone jobs "
             "measured on this machine for that layout. Times at real-time scale.", "",
             "| layout | rate /h | jobs | videos/h measured | predicted | error | p50 s measured | predicted | "
             "error | p95 s measured | predicted | error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        cells = [f"{row.measured[k]:.1f} | {row.predicted[k]:.1f} | {row.errors[k]:.1%}"
                 for k in ("videos_per_hour", "p50_s", "p95_s")]
        lines.append(f"| {row.layout} | {row.rate_per_hour:g} | {row.jobs} | " + " | ".join(cells) + " |")
    lines += ["", f"max error: {worst:.1%}", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    logger.info("wrote %s and %s (max error %.1f%%)", out, out.with_suffix(".md"), 100 * worst)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["mono-8", "mono-2x4", "staged-6"],
                        choices=[layout.name for layout in LAYOUTS])
    parser.add_argument("--rates", nargs="+", type=float, default=[12.0, 20.0], help="videos/hour, real-time scale")
    parser.add_argument("--jobs", type=int, default=24, help="arrivals per row")
    parser.add_argument("--lone_jobs", type=int, default=2)
    parser.add_argument("--time_factor", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=2, help="sim steps per job (30 real steps' GPU time)")
    parser.add_argument("--drain_timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "planner_validation.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="planner-validation-"))
    args.timings = SimOptions().timings
    options = SimOptions(time_factor=args.time_factor, profile=_coarse_profile(args.timings, args.steps, root))
    layouts = [layout for layout in LAYOUTS if layout.name in args.layouts]
    port, started, rows = free_port(), time.monotonic(), []
    with FakeGpuCluster(ClusterSpec(head_cpus=16, min_gpu_nodes=1, max_gpu_nodes=1)) as cluster:
        ray.init(address=cluster.address, log_to_driver=False)
        for layout in layouts:
            rows += run_layout(layout, args, options, root, port)
            write(rows, args, time.monotonic() - started)
        serve.shutdown()
        ray.shutdown()
    write(rows, args, time.monotonic() - started)


if __name__ == "__main__":
    main()
