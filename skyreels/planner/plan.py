"""Which layout serves the traffic best: every candidate layout of the GPUs, memory-checked, run through the model
under the traffic, ranked by whether it keeps up and meets the latency target, then by dollars per video.

    predictions = plan(Fleet(gpus=8, gpu_type="H100-80GB"), Traffic(rate_per_hour=30, p95_target_s=600))
    print(markdown(predictions))
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from skyreels.planner.hardware import profile_for, speed
from skyreels.planner.layouts import STEP_CACHE_SKIP, Layout, candidates
from skyreels.planner.memory import MemoryTable
from skyreels.planner.model import Arrival, ModelledApp, Orchestration, Outcome, ServedAppModel, quantile
from skyreels.sim.profile import WORKLOAD, WORKLOAD_STEPS, SimProfile, VideoShape

KEEPS_UP = 0.97  # served / offered: below this the queue grows without bound


@dataclass(frozen=True)
class Traffic:
    rate_per_hour: float
    mix: Mapping[str, float] = field(default_factory=lambda: {"t2v": 1.0})  # task -> share
    shape: VideoShape = WORKLOAD
    steps: int = WORKLOAD_STEPS
    p95_target_s: float | None = None
    step_cache: bool = False
    jobs: int = 400  # arrivals the model runs (Poisson, seeded)
    seed: int = 0

    def arrivals(self) -> list[Arrival]:
        rng, at, out = random.Random(self.seed), 0.0, []
        tasks, weights = zip(*self.mix.items(), strict=True)
        for _ in range(self.jobs):
            out.append(Arrival(at, self.shape, self.steps, rng.choices(tasks, weights)[0]))
            at += rng.expovariate(self.rate_per_hour / 3600)
        return out


@dataclass(frozen=True)
class Fleet:
    gpus: int
    gpu_type: str
    pool: Mapping[str, int] = field(default_factory=dict)  # other GPU types for the text and VAE stages
    prices: Mapping[str, float] = field(default_factory=dict)  # $ per GPU-hour, over hardware.GPU_SPEEDS'

    def price(self, gpu_type: str) -> float:
        return self.prices.get(gpu_type, speed(gpu_type).dollars_per_hour)


@dataclass(frozen=True)
class Prediction:
    layout: Layout
    videos_per_hour: float
    p50_s: float
    p95_s: float
    slo_attainment: float | None  # share of videos within the p95 target
    gpu_hours_per_video: float
    dollars_per_video: float
    keeps_up: bool

    @property
    def meets_target(self) -> bool:
        return self.keeps_up and (self.slo_attainment is None or self.slo_attainment >= 0.95)


def summarize(layout: Layout, outcome: Outcome, traffic: Traffic, fleet: Fleet) -> Prediction:
    done = outcome.completed
    start = min(job.arrival.at_s for job in outcome.jobs)
    hours = (max(job.completed_s for job in done) - start) / 3600
    latency = [job.latency_s for job in done]
    dollars = sum(count * fleet.price(kind) for kind, count in layout.gpus().items()) * hours
    slo = (None if traffic.p95_target_s is None
           else sum(value <= traffic.p95_target_s for value in latency) / len(latency))
    served = len(done) / hours
    return Prediction(layout, served, quantile(latency, 0.5), quantile(latency, 0.95), slo,
                      layout.total_gpus * hours / len(done), dollars / len(done),
                      keeps_up=served >= KEEPS_UP * min(traffic.rate_per_hour, _offered(outcome)))


def _offered(outcome: Outcome) -> float:
    """Arrivals per hour over the arrival window."""
    times = sorted(job.arrival.at_s for job in outcome.jobs)
    return (len(times) - 1) / max(times[-1] - times[0], 1e-9) * 3600


def modelled(layout: Layout, traffic: Traffic, profiles: dict[str, SimProfile],
             orchestration: Orchestration | None = None) -> ModelledApp:
    return layout.modelled(profiles, orchestration, step_cache_skip=STEP_CACHE_SKIP if traffic.step_cache else 0.0)


def plan(fleet: Fleet, traffic: Traffic, table: MemoryTable | None = None,
         orchestration: Orchestration | None = None) -> list[Prediction]:
    """Every candidate that fits its GPUs, best first."""
    table = table or MemoryTable.load()
    kinds = {fleet.gpu_type, *fleet.pool}
    profiles = {kind: profile_for(kind) for kind in kinds}
    arrivals = traffic.arrivals()
    predictions = []
    for candidate in candidates(fleet.gpus, fleet.gpu_type, dict(fleet.pool)):
        layout = candidate.with_precision_that_fits(table)
        if layout is None:
            continue
        outcome = ServedAppModel(modelled(layout, traffic, profiles, orchestration)).run(arrivals)
        predictions.append(summarize(layout, outcome, traffic, fleet))
    # those that meet the target by cost; the others by how close they come
    return sorted(predictions, key=lambda p: (not p.meets_target, not p.keeps_up,
                                              0.0 if p.meets_target else -(p.slo_attainment or 0.0),
                                              p.dollars_per_video, p.p95_s))


def markdown(predictions: list[Prediction], traffic: Traffic) -> str:
    target = f"p95 <= {traffic.p95_target_s:g} s" if traffic.p95_target_s is not None else "no latency target"
    lines = [f"| layout | GPUs | precision | videos/h | p50 s | p95 s | SLO ({target}) | GPU-h/video | $/video | "
             "keeps up |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in predictions:
        slo = "-" if p.slo_attainment is None else f"{p.slo_attainment:.0%}"
        gpus = ", ".join(f"{n} {kind}" for kind, n in p.layout.gpus().items())
        lines.append(f"| {p.layout.name}: {p.layout.shape()} | {gpus} | {p.layout.precision} | "
                     f"{p.videos_per_hour:.1f} | {_seconds(p.p50_s)} | {_seconds(p.p95_s)} | {slo} | "
                     f"{p.gpu_hours_per_video:.2f} | {p.dollars_per_video:.2f} | {'yes' if p.keeps_up else 'no'} |")
    return "\n".join(lines) + "\n"


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"
