"""The planner's model against the real app: each layout on the fake-GPU sim cluster, under the same arrivals as
the model's run, and the error of the model's throughput, p50 and p95.

    python benchmarks/planner_validation.py                  # 3 layouts x 2 rates, 24 jobs a row: ~25 min
    python benchmarks/planner_validation.py --layouts mono-8 --rates 18 --jobs 10

Per layout: the app (cluster/serve_config.gpu8.yaml's, on the `sim` model source, replicas fixed as
benchmarks/bench_cluster.py lays them out, tracing to files) on one fake 8-GPU node; the traces of two lone jobs
measure what Ray and Serve add to each stage call on this machine and the part of it that holds the replica (the
model's Orchestration, in wall seconds, divided by the time factor); then at
each rate, jobs arrive at seeded Poisson times (sim time) and the queue drains. The model runs the same arrival
times through the same layout. Writes benchmarks/results/planner_validation.{md,json}; `--run_dir` analyses a
finished run's directory again (its store and traces) without running it.
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
from job_breakdown import held_seconds, spans_by_job
from ray import serve
from sim_cluster import ClusterSpec, FakeGpuCluster, deploy

from serve_app.client import VideoClient
from serve_app.launch import wait_ready
from skyreels.parallel.group import free_port
from skyreels.planner.layouts import Layout as PlannedLayout
from skyreels.planner.layouts import StagePlan
from skyreels.planner.model import Arrival, Orchestration, ServedAppModel, quantile
from skyreels.sim.profile import WORKLOAD, WORKLOAD_STEPS, SimProfile
from skyreels.sim.source import SimOptions

logger = logging.getLogger("planner_validation")

ROOT = Path(__file__).resolve().parents[1]
GPU_TYPE = "A800-80GB"  # the sim profile's (published A800 figures)
MODEL_SEEDS = 10


@dataclass(frozen=True)
class Row:
    layout: str
    rate_per_hour: float
    jobs: int
    measured: dict[str, float]  # videos_per_hour, p50_s, p95_s (real-time scale)
    predicted: dict[str, float]  # the model, with the orchestration of the layout's lone jobs
    predicted_in_run: dict[str, float]  # the model, with the orchestration this row's jobs had (the same load)
    orchestration: dict[str, dict[str, float]]  # wall seconds: "lone", "in_run"

    def errors(self, predicted: dict[str, float]) -> dict[str, float]:
        return {key: abs(predicted[key] - value) / value for key, value in self.measured.items()}


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


CALLS = ("text", "gang", "decode")


def call_seconds(traces: dict[str, list[dict]], ids: list[str], layout: Layout) -> dict[str, float]:
    """From the jobs' traces, mean wall seconds of each stage call (CALLS): on the replica (its server span), the
    hop there (the client span's start to the server's) and back, and the runner's own part of the job. A decode
    on the gang is made in the denoise call (its span inside the Denoiser's): no hop, and out of the gang's part."""
    on_gang = layout.decode_on == "gang"
    names = {"text": ("text_encode", "TextEncoder.encode"), "gang": ("denoise", "Denoiser.denoise"),
             "decode": (None if on_gang else "decode",
                        "Denoiser.decode_to_storage" if on_gang else "Vae.decode_to_storage")}
    samples: dict[str, list[float]] = defaultdict(list)
    for job_id in ids:
        spans = traces[job_id]

        def one(name: str, kind: str) -> dict:
            return next(s for s in spans if s["name"] == name and s["kind"].endswith(kind))

        servers = {part: one(server_name, "SERVER") for part, (_, server_name) in names.items()}
        clients = {part: one(client_name, "CLIENT") for part, (client_name, _) in names.items() if client_name}
        for part, server in servers.items():
            client = clients.get(part, server)
            inner = servers["decode"]["seconds"] if part == "gang" and on_gang else 0.0
            samples[f"{part}_server"].append(server["seconds"] - inner)
            samples[f"{part}_there"].append(server["start"] - client["start"])
            samples[f"{part}_back"].append(client["end"] - server["end"])
        samples["runner"].append(one("job", "INTERNAL")["seconds"] - sum(c["seconds"] for c in clients.values()))
    return {name: statistics.fmean(values) for name, values in samples.items()}


def orchestration_of(seconds: dict[str, float], held: dict[str, float], there: dict[str, float]) -> Orchestration:
    """What Ray and Serve add to each call beyond the sim's hold (wall seconds); `there`: each call's hop to its
    replica, from lone jobs (in a loaded run that gap also holds the wait for a free replica, which the model
    plays itself)."""
    extra = {part: max(0.0, seconds[f"{part}_server"] - held[part]) for part in CALLS}
    total = {part: extra[part] + there[f"{part}_there"] + seconds[f"{part}_back"] for part in CALLS}
    return Orchestration(text_s=total["text"], gang_s=total["gang"], gang_held_s=extra["gang"],
                         decode_s=total["decode"], decode_held_s=extra["decode"], per_job_s=max(0.0, seconds["runner"]))


def stored_jobs(database: Path) -> list[dict]:
    """The jobs' records as the store has them: times to the microsecond (the API gives whole seconds, 20 s of
    real time at a time factor of 0.05)."""
    with closing(sqlite3.connect(database)) as connection:
        return [json.loads(data) for (data,) in connection.execute("SELECT data FROM jobs")]


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
    """The model's figures for these arrivals, averaged over its routing seeds (the order in which Serve's router
    serves waiting requests is, in effect, random: skyreels/planner/model.py)."""
    app = planned(layout).modelled({GPU_TYPE: profile}, orchestration_wall.scaled(1 / factor), sim_stand_ins=True)
    app = replace(app, max_running_jobs=max_running_jobs)  # the deployed config's
    runs = []
    for seed in range(MODEL_SEEDS):
        done = ServedAppModel(app, seed).run([Arrival(at, WORKLOAD, WORKLOAD_STEPS) for at in times]).completed
        runs.append(figures([j.arrival.at_s for j in done], [j.completed_s for j in done], 1.0))
    return {key: statistics.fmean(run[key] for run in runs) for key in runs[0]}


def run_layout(layout: Layout, args: argparse.Namespace, options: SimOptions, root: Path, port: int) -> None:
    """The layout's lone jobs, then each rate's arrivals; the records and traces stay under root/<layout>."""
    deploy(layout_config(layout, root, port, options))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout_s=300)
    with VideoClient(url, timeout_s=120) as client:
        drain(client, [client.submit("warm-up", seed=0, num_inference_steps=args.steps)["id"]])
        for i in range(args.lone_jobs):
            drain(client, [client.submit(f"lone job {i}", seed=i, num_inference_steps=args.steps)["id"]])
        for rate in args.rates:
            ids = submit_at(client, arrivals(rate, args.jobs, args.seed), options.time_factor, args.steps,
                            f"{layout.name} at {rate}/h")
            drain(client, ids, timeout_s=args.drain_timeout)
    serve.delete(APP)


def layout_config(layout: Layout, root: Path, port: int, options: SimOptions) -> dict:
    config = layout.config(yaml.safe_load(GPU8.read_text()), root / layout.name, port, options)
    config["applications"][0]["args"]["tracing"] = {"exporter": "file", "file_dir": str(root / layout.name / "spans")}
    return config


def analyze_layout(layout: Layout, args: argparse.Namespace, options: SimOptions, root: Path) -> list[Row]:
    """The rows of a layout's run under root/<layout>: measured from the store's records, predicted by the model
    with the lone jobs' orchestration and with the row's own."""
    jobs = {job["prompt"]: job for job in stored_jobs(root / layout.name / "jobs.sqlite3")}
    traces = spans_by_job(root / layout.name / "spans")
    held = held_seconds(layout.gang, layout.decode_on, args.timings, options.time_factor)
    lone_seconds = call_seconds(traces, [jobs[f"lone job {i}"]["id"] for i in range(args.lone_jobs)], layout)
    lone = orchestration_of(lone_seconds, held, lone_seconds)
    max_running_jobs = layout_config(layout, root, 0, options)["applications"][0]["args"]["max_running_jobs"]
    rows = []
    for rate in args.rates:
        times = arrivals(rate, args.jobs, args.seed)
        row_jobs = [jobs[f"{layout.name} at {rate}/h job {i}"] for i in range(args.jobs)]
        done = [job for job in row_jobs if job["status"] == "completed"]
        in_run = orchestration_of(call_seconds(traces, [job["id"] for job in done], layout), held, lone_seconds)
        row = Row(layout.name, rate, len(done),
                  figures([j["created_at"] for j in done], [j["completed_at"] for j in done], options.time_factor),
                  predict(layout, args.timings, lone, options.time_factor, times, max_running_jobs),
                  predict(layout, args.timings, in_run, options.time_factor, times, max_running_jobs),
                  {"lone": asdict(lone), "in_run": asdict(in_run)})
        logger.info("%s at %g/h: measured %s; predicted %s (lone jobs' orchestration), %s (the run's)", layout.name,
                    rate, *({k: round(v, 1) for k, v in figures_.items()}
                            for figures_ in (row.measured, row.predicted, row.predicted_in_run)))
        rows.append(row)
    return rows


def write(rows: list[Row], args: argparse.Namespace, root: Path) -> None:
    out = args.out
    predictions = {"predicted": "the lone jobs' orchestration", "predicted_in_run": "the run's own orchestration"}
    worst = {name: max(error for row in rows for error in row.errors(getattr(row, name)).values())
             for name in predictions}
    report = {"command": "python " + " ".join(sys.argv), "run_dir": str(root), "host": platform.node(),
              "ray": ray.__version__, "time_factor": args.time_factor, "sim_steps": args.steps,
              "jobs_per_row": args.jobs, "max_error": worst["predicted_in_run"], "max_error_lone": worst["predicted"],
              "rows": [asdict(row) for row in rows]}
    out.write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# The planner's model against the real app on the sim cluster", "",
             f"`{report['command']}` (Ray {ray.__version__}, a 2-core VM). Each row: {args.jobs} jobs of 544x960x97, "
             f"30 steps (as {args.steps} sim steps) at seeded Poisson times, time factor {args.time_factor}, on one "
             "fake 8-GPU node; the model (skyreels/planner/model.py) runs the same arrival times through the same "
             "layout. What Ray and Serve add to each stage call on this machine (wall seconds: the replica's part "
             "holds it, the hops do not; from the jobs' traces) goes into the model in two ways: as two lone jobs "
             "of the layout had it, and as the row's own jobs had it (the same load: on 2 cores it grows with the "
             "jobs in flight). Times at real-time scale; measured times are the store's (to the microsecond).", ""]
    for name, how in predictions.items():
        lines += [f"## The model with {how}", "",
                  "| layout | rate /h | jobs | videos/h measured | predicted | error | p50 s measured | predicted | "
                  "error | p95 s measured | predicted | error |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in rows:
            predicted, errors = getattr(row, name), row.errors(getattr(row, name))
            cells = [f"{row.measured[k]:.1f} | {predicted[k]:.1f} | {errors[k]:.1%}"
                     for k in ("videos_per_hour", "p50_s", "p95_s")]
            lines.append(f"| {row.layout} | {row.rate_per_hour:g} | {row.jobs} | " + " | ".join(cells) + " |")
        lines += ["", f"Largest error with {how}: {worst[name]:.1%}", ""]
    lines += ["Orchestration per job (wall s; lone / in the run):", ""]
    for row in rows:
        lone, in_run = row.orchestration["lone"], row.orchestration["in_run"]
        cells = ", ".join(f"{key} {lone[key]:.3f}/{in_run[key]:.3f}" for key in lone)
        lines.append(f"- {row.layout} at {row.rate_per_hour:g}/h: {cells}")
    lines += ["", f"max error: {worst['predicted_in_run']:.1%}", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    logger.info("wrote %s and %s (max error %.1f%%; with lone jobs' orchestration %.1f%%)", out,
                out.with_suffix(".md"), 100 * worst["predicted_in_run"], 100 * worst["predicted"])


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
    parser.add_argument("--run_dir", type=Path,
                        help="analyse the run left in this directory (its records and traces) instead of running")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "planner_validation.json")
    args = parser.parse_args()
    root = args.run_dir or Path(tempfile.mkdtemp(prefix="planner-validation-"))
    args.timings = SimOptions().timings
    options = SimOptions(time_factor=args.time_factor, profile=_coarse_profile(args.timings, args.steps, root))
    layouts = [layout for layout in LAYOUTS if layout.name in args.layouts]
    if args.run_dir is None:
        port = free_port()
        with FakeGpuCluster(ClusterSpec(head_cpus=16, min_gpu_nodes=1, max_gpu_nodes=1)) as cluster:
            ray.init(address=cluster.address, log_to_driver=False)
            for layout in layouts:
                run_layout(layout, args, options, root, port)
            serve.shutdown()
            ray.shutdown()
    write([row for layout in layouts for row in analyze_layout(layout, args, options, root)], args, root)


if __name__ == "__main__":
    main()
