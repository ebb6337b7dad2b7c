"""A day of traffic at 64 and 256 GPUs, through the planner's model: autoscaling against a static fleet sized for
the peak.

    python benchmarks/plan_day.py          # a few seconds: the model, not Ray

The day: a diurnal curve (peak at 20:00, a trough of a fifth of it at 08:00) plus three bursts of three times the
hour's rate for ten minutes, Poisson within. The fleet: H100 nodes of 8 running cluster/serve_config.gpu8.yaml's
layout (one gang of 8 per node, decode on the gang) with its autoscaling (Denoiser 1..N/8 gangs, its upscale and
downscale delays), nodes that start in 5 minutes and go after 10 idle ones; the static fleet holds every node
all day. Writes benchmarks/results/plan_day.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from skyreels.planner.hardware import profile_for  # noqa: E402
from skyreels.planner.layouts import GPUS_PER_NODE, TEMPLATE, Layout  # noqa: E402
from skyreels.planner.model import Arrival, Autoscaling, Outcome, ServedAppModel, quantile  # noqa: E402
from skyreels.sim.profile import WORKLOAD  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GPU = "H100-80GB"
DAY_S = 24 * 3600
BURSTS = ((9.5, 3.0), (13.0, 3.0), (20.5, 3.0))  # (hour, times the rate), ten minutes each
BURST_S = 600


def rate_at(t: float, peak_per_hour: float) -> float:
    hour = t / 3600
    diurnal = 0.6 + 0.4 * math.cos(2 * math.pi * (hour - 20) / 24)  # 1.0 at 20:00, 0.2 at 08:00
    rate = peak_per_hour * diurnal
    for start, factor in BURSTS:
        if start * 3600 <= t < start * 3600 + BURST_S:
            rate *= factor
    return rate


def day_arrivals(peak_per_hour: float, seed: int) -> list[Arrival]:
    """A non-homogeneous Poisson process by thinning."""
    rng, t, out = random.Random(seed), 0.0, []
    ceiling = peak_per_hour * max(f for _, f in BURSTS) / 3600
    while True:
        t += rng.expovariate(ceiling)
        if t >= DAY_S:
            return out
        if rng.random() < rate_at(t, peak_per_hour) / 3600 / ceiling:
            out.append(Arrival(t, WORKLOAD))


def gpu8_autoscaling(max_gangs: int) -> Autoscaling:
    (app,) = yaml.safe_load(TEMPLATE.read_text())["applications"]
    (denoiser,) = [d for d in app["deployments"] if d["name"] == "Denoiser"]
    scaling = denoiser["autoscaling_config"]
    return Autoscaling(min_replicas=1, max_replicas=max_gangs,
                       target_ongoing_requests=scaling["target_ongoing_requests"],
                       upscale_delay_s=scaling["upscale_delay_s"], downscale_delay_s=scaling["downscale_delay_s"])


def hourly(outcome: Outcome) -> list[dict]:
    rows = []
    for hour in range(24):
        jobs = [j for j in outcome.completed if hour * 3600 <= j.arrival.at_s < (hour + 1) * 3600]
        rows.append({"hour": hour, "arrivals": len(jobs),
                     "p95_s": quantile([j.latency_s for j in jobs], 0.95) if jobs else None})
    return rows


def nodes_by_hour(outcome: Outcome) -> list[float]:
    """Mean GPU nodes alive in each hour."""
    changes = outcome.nodes_over_time
    means = []
    for hour in range(24):
        start, end, total = hour * 3600, (hour + 1) * 3600, 0.0
        for (t, count), (t_next, _) in zip(changes, [*changes[1:], (max(outcome.end_s, end), 0)]):
            total += count * max(0.0, min(t_next, end) - max(t, start))
        means.append(total / 3600)
    return means


def run(gpus: int, peak_per_hour: float, seed: int) -> dict:
    gangs = gpus // GPUS_PER_NODE
    layout = Layout("mono-8", GPU, GPUS_PER_NODE, gangs, "gang")
    profiles = {GPU: profile_for(GPU)}
    arrivals = day_arrivals(peak_per_hour, seed)
    autoscaled = ServedAppModel(layout.modelled(
        profiles, autoscale={"Denoiser": gpu8_autoscaling(gangs)}, max_nodes={GPU: gangs})).run(arrivals)
    static = ServedAppModel(layout.modelled(profiles)).run(arrivals)
    static_gpu_hours = gpus * max(static.end_s, DAY_S) / 3600
    return {
        "gpus": gpus, "peak_per_hour": peak_per_hour, "videos": len(arrivals),
        "autoscaled": {"gpu_hours": autoscaled.gpu_seconds / 3600, "completed": len(autoscaled.completed),
                       "p95_s": quantile([j.latency_s for j in autoscaled.completed], 0.95),
                       "hourly": hourly(autoscaled), "nodes_by_hour": nodes_by_hour(autoscaled)},
        "static": {"gpu_hours": static_gpu_hours, "completed": len(static.completed),
                   "p95_s": quantile([j.latency_s for j in static.completed], 0.95), "hourly": hourly(static)},
    }


def chart(results: list[dict], path: Path) -> None:
    figure, axes = plt.subplots(len(results), 2, figsize=(12, 3.4 * len(results)), squeeze=False)
    hours = list(range(24))
    for (load, latency), result in zip(axes, results, strict=True):
        auto = result["autoscaled"]
        load.bar(hours, [row["arrivals"] for row in auto["hourly"]], color="lightgray", label="videos arriving")
        load.set(xlabel="hour", ylabel="videos / hour", title=f"{result['gpus']} H100s: traffic and GPUs held")
        gpus_axis = load.twinx()
        gpus_axis.step(hours, [n * GPUS_PER_NODE for n in auto["nodes_by_hour"]], where="mid", color="tab:blue",
                       label="GPUs (autoscaled)")
        gpus_axis.axhline(result["gpus"], color="tab:red", linestyle="--", label="GPUs (static)")
        gpus_axis.set_ylabel("GPUs")
        gpus_axis.legend(fontsize=7, loc="upper left")
        for name, colour in (("autoscaled", "tab:blue"), ("static", "tab:red")):
            latency.plot(hours, [row["p95_s"] for row in result[name]["hourly"]], marker="o", color=colour,
                         label=name)
        latency.set(xlabel="hour", ylabel="p95 latency (s)", title="p95 by hour of arrival")
        latency.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", nargs="+", type=int, default=[64, 256], help="GPUs at most")
    parser.add_argument("--peak_share", type=float, default=0.7,
                        help="the diurnal peak as a share of the fleet's capacity (bursts go beyond it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plan_day.json")
    args = parser.parse_args()
    profile = profile_for(GPU)
    job_s = 30 * profile.step_seconds(WORKLOAD, 2, 4) + profile.decode_seconds(WORKLOAD, 8) + profile.mux.at(WORKLOAD)
    results = [run(gpus, args.peak_share * gpus // GPUS_PER_NODE * 3600 / job_s, args.seed) for gpus in args.fleets]
    args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "job_s": job_s,
                                    "results": results}, indent=2) + "\n")
    chart(results, args.out.with_suffix(".png"))
    lines = ["# A day at 64 and 256 H100s (the planner's model)", "",
             f"`python {' '.join(sys.argv)}`. Videos of 544x960x97, 30 steps ({job_s:.0f} s on a gang of 8 H100s, "
             "scaled from the published A800 figures); diurnal traffic peaking at "
             f"{args.peak_share:.0%} of the fleet's capacity at 20:00, a fifth of that at 08:00, and three "
             "ten-minute bursts at 3x (09:30, 13:00, 20:30). gpu8's autoscaling (Denoiser gangs of 8 from 1 to "
             "all, its delays), 5-minute node starts, nodes released after 10 idle minutes; static: every node "
             "all day. Chart: plan_day.png.", "",
             "| GPUs | videos | GPU-hours autoscaled | static | saved | p95 s autoscaled | static | worst hour's p95 "
             "autoscaled | static |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        auto, static = r["autoscaled"], r["static"]
        worst = [max(row["p95_s"] or 0 for row in run_["hourly"]) for run_ in (auto, static)]
        lines.append(f"| {r['gpus']} | {r['videos']} | {auto['gpu_hours']:.0f} | {static['gpu_hours']:.0f} | "
                     f"{1 - auto['gpu_hours'] / static['gpu_hours']:.0%} | {auto['p95_s']:.0f} | "
                     f"{static['p95_s']:.0f} | {worst[0]:.0f} | {worst[1]:.0f} |")
    lines += ["", "p95 by hour of arrival (autoscaled / static, s):", ""]
    for r in results:
        cells = ", ".join(f"{a['hour']:02d}h {a['p95_s'] or 0:.0f}/{s['p95_s'] or 0:.0f}"
                          for a, s in zip(r["autoscaled"]["hourly"], r["static"]["hourly"], strict=True))
        lines.append(f"- {r['gpus']} GPUs: {cells}")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
