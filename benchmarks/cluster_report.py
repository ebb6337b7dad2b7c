"""Figures of bench_cluster.py's runs: per layout and arrival rate, what the jobs' records and the sim's profile say;
markdown and PNG charts of them. Times are at real-time scale (sim seconds / time factor) unless said "wall"."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# the recipe's stage timings in a job's metrics; "vae_decode" and "mux" are parts of "decode"
STAGE_METRICS = ("text_encode", "image_encode", "denoise", "checkpoint", "decode")


@dataclass(frozen=True)
class StageSeconds:
    """What one job holds each stage for at real-time scale (the sim profile's seconds on the layout's GPUs)."""

    text: float
    denoise: float
    decode: float  # on the gang or on a Vae, by the layout


@dataclass(frozen=True)
class RunSummary:
    layout: str
    rate_per_hour: float
    submitted: int
    completed: int
    throughput_per_hour: float
    latency_p50_s: float
    latency_p95_s: float
    queue_wait_p50_s: float
    queue_wait_p95_s: float
    busy: dict[str, float]  # stage -> fraction of its replicas' time spent working; "gpus": of all GPUs
    overhead_ms: float  # wall: started -> completed minus the sum of the stages' own timings (the runner's share)
    orchestration_ms: float  # wall: started -> completed minus what the stages hold (hops and waits included)
    job_seconds: float  # one job's stage seconds end to end, without queueing
    capacity_per_hour: float  # the most videos/hour the layout's busiest stage allows (profile arithmetic)


def summarize(layout: Any, rate_per_hour: float, jobs: list[dict], stage: StageSeconds, factor: float) -> RunSummary:
    """`layout`: bench_cluster.Layout (replicas and GPUs of each stage)."""
    done = [job for job in jobs if job["status"] == "completed"]
    start = min(job["created_at"] for job in jobs)
    window = (max(job["completed_at"] for job in done) - start) / factor if done else float("nan")
    latency = [(job["completed_at"] - job["created_at"]) / factor for job in done]
    waits = [(job["started_at"] - job["created_at"]) / factor for job in done]
    held = stage.text + stage.denoise + stage.decode
    per_job = {"TextEncoder": stage.text,
               "Denoiser": stage.denoise + (stage.decode if layout.decode_on == "gang" else 0.0),
               "Vae": stage.decode if layout.decode_on == "vae" else 0.0}
    replicas = {"TextEncoder": 1, "Denoiser": layout.gangs, "Vae": max(layout.vaes, 1)}
    work = {name: len(done) * seconds for name, seconds in per_job.items()}
    busy = {name: work[name] / (replicas[name] * window) for name in work}
    gpu_seconds = work["Denoiser"] * layout.gang + work["Vae"] + work["TextEncoder"]
    busy["gpus"] = gpu_seconds / (layout.gpus * window)
    runs = [job["completed_at"] - job["started_at"] for job in done]
    overhead = [run - sum(job["metrics"].get(key, 0.0) for key in STAGE_METRICS) for run, job in zip(runs, done)]
    return RunSummary(
        layout=layout.name, rate_per_hour=rate_per_hour, submitted=len(jobs), completed=len(done),
        throughput_per_hour=len(done) / window * 3600, latency_p50_s=_quantile(latency, 0.5),
        latency_p95_s=_quantile(latency, 0.95), queue_wait_p50_s=_quantile(waits, 0.5),
        queue_wait_p95_s=_quantile(waits, 0.95), busy=busy, overhead_ms=1000 * _mean(overhead),
        orchestration_ms=1000 * _mean([run - held * factor for run in runs]), job_seconds=held,
        capacity_per_hour=3600 / max(per_job[name] / replicas[name] for name in per_job))


def queue_depth(jobs: list[dict], start: float, factor: float, points: int = 200) -> tuple[list[float], list[int]]:
    """Jobs waiting in the ingress's queue over time (real-time scale, from `start`)."""
    end = max(job.get("completed_at") or job["created_at"] for job in jobs)
    times = [start + (end - start) * i / points for i in range(points + 1)]
    depth = [sum(1 for job in jobs if job["created_at"] <= t < (job.get("started_at") or float("inf"))) for t in times]
    return [(t - start) / factor for t in times], depth


def markdown(summaries: list[RunSummary], layouts: list[Any], header: list[str]) -> str:
    lines = [*header, "", "| layout | GPUs | decode on | capacity /h | rate /h | done | videos /h | p50 s | p95 s | "
             "queue p50 s | busy text / DiT / VAE / GPUs | overhead ms | orchestration ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_name = {layout.name: layout for layout in layouts}
    for s in summaries:
        layout = by_name[s.layout]
        busy = " / ".join(f"{s.busy[k]:.0%}" for k in ("TextEncoder", "Denoiser", "Vae", "gpus"))
        lines.append(f"| {s.layout} | {layout.shape} | {layout.decode_on} | {s.capacity_per_hour:.1f} | "
                     f"{s.rate_per_hour:g} | "
                     f"{s.completed}/{s.submitted} | {s.throughput_per_hour:.1f} | {s.latency_p50_s:.0f} | "
                     f"{s.latency_p95_s:.0f} | {s.queue_wait_p50_s:.0f} | {busy} | {s.overhead_ms:.0f} | "
                     f"{s.orchestration_ms:.0f} |")
    return "\n".join(lines) + "\n"


def rate_chart(summaries: list[RunSummary], path: Path) -> None:
    figure, (throughput, p95) = plt.subplots(1, 2, figsize=(11, 4))
    for layout in dict.fromkeys(s.layout for s in summaries):
        rows = [s for s in summaries if s.layout == layout]
        rates = [s.rate_per_hour for s in rows]
        throughput.plot(rates, [s.throughput_per_hour for s in rows], marker="o", label=layout)
        p95.plot(rates, [s.latency_p95_s for s in rows], marker="o", label=layout)
    throughput.set(xlabel="arrivals (videos/hour)", ylabel="served (videos/hour)", title="throughput, 8 GPUs")
    p95.set(xlabel="arrivals (videos/hour)", ylabel="p95 latency (s)", title="p95 latency")
    throughput.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def timeline_chart(timelines: dict[str, dict], path: Path) -> None:
    """Per run: queue depth, replicas of each deployment and GPU nodes over time."""
    figure, axes = plt.subplots(len(timelines), 1, figsize=(10, 2.6 * len(timelines)), squeeze=False)
    for axis, (title, timeline) in zip(axes[:, 0], timelines.items()):
        axis.plot(*timeline["queue"], color="black", label="queued jobs")
        for name, (times, counts) in timeline["replicas"].items():
            axis.step(times, counts, where="post", label=f"{name} replicas")
        axis.step(*timeline["nodes"], where="post", linestyle="--", label="GPU nodes")
        axis.set(title=title, xlabel="time (s, real-time scale)")
        axis.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
