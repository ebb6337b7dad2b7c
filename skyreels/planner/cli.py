"""`skyreels plan`: the layouts of a fleet under a traffic, best first, and the best one as a Serve config; or, with
--config, what a given Serve config does with a burst or a list of arrivals."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def add_plan_command(commands: argparse._SubParsersAction) -> None:
    from skyreels.planner.hardware import GPU_SPEEDS

    plan = commands.add_parser(
        "plan", help="pick the layout (gangs, staged text/VAE, pools) for your GPUs, traffic and latency target",
        description="Runs every candidate layout of the GPUs through a discrete-event model of the served app "
                    "(skyreels/planner/model.py, validated against the real app: benchmarks/results/"
                    "planner_validation.md) and prints a markdown table, best first; writes the best as a Serve "
                    "config. With --config: predicts that config under --burst N or --workload FILE.")
    plan.add_argument("--gpus", type=int, help="GPUs of --gpu_type for the gangs (and staged stages)")
    plan.add_argument("--gpu_type", default="H100-80GB", choices=list(GPU_SPEEDS))
    plan.add_argument("--rate", type=float, help="videos per hour arriving (Poisson)")
    plan.add_argument("--p95", type=float, metavar="SECONDS", help="latency target: 95%% of videos within it")
    plan.add_argument("--mix", default="t2v=1", help="task shares, e.g. t2v=0.7,i2v=0.3")
    plan.add_argument("--step-cache", dest="step_cache", action="store_true",
                      help="the step cache is on (about 40%% of steps skipped)")
    plan.add_argument("--pool", default="", help="GPUs of other types for the text and VAE stages, e.g. L4-24GB:2")
    plan.add_argument("--prices", type=Path, help="JSON {gpu_type: dollars per GPU-hour} over the built-in table")
    plan.add_argument("--size", default="960x544", help="WIDTHxHEIGHT of the videos")
    plan.add_argument("--num_frames", type=int, default=97)
    plan.add_argument("--steps", type=int, default=30)
    plan.add_argument("--out", type=Path, help="where to write the best layout's Serve config")
    plan.add_argument("--config", type=Path, metavar="SERVE_CONFIG.yaml", help="predict this config instead")
    plan.add_argument("--burst", type=int, help="with --config: this many jobs submitted at once")
    plan.add_argument("--workload", type=Path,
                      help="with --config: a JSON list of arrivals {at_s, task?, steps?, priority?} (real-time s)")
    plan.add_argument("--orchestration", type=Path,
                      help="JSON of Orchestration's fields (wall seconds per job beyond the GPU work) measured on "
                           "the machine the config runs on")
    plan.set_defaults(run=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from skyreels.cli import UsageError
    from skyreels.planner.model import Orchestration

    orchestration = Orchestration(**json.loads(args.orchestration.read_text())) if args.orchestration else None
    if args.config is not None:
        if (args.burst is None) == (args.workload is None):
            raise UsageError("--config needs --burst N or --workload FILE")
        return _predict_config(args, orchestration)
    if args.gpus is None or args.rate is None:
        raise UsageError("skyreels plan needs --gpus and --rate (or --config)")
    return _plan(args, orchestration)


def _traffic(args: argparse.Namespace):
    from skyreels.cli import UsageError
    from skyreels.planner.plan import Traffic
    from skyreels.sim.profile import VideoShape

    try:
        mix = {task: float(share) for task, share in (item.split("=") for item in args.mix.split(","))}
        width, height = map(int, args.size.lower().split("x"))
    except ValueError as error:
        raise UsageError(f"--mix {args.mix!r} / --size {args.size!r}: {error}") from error
    if set(mix) - {"t2v", "i2v"} or not sum(mix.values()) > 0:
        raise UsageError(f"--mix: shares of t2v and i2v, e.g. t2v=0.7,i2v=0.3 (got {args.mix!r})")
    return Traffic(rate_per_hour=args.rate, mix=mix, shape=VideoShape(height=height, width=width,
                                                                      num_frames=args.num_frames),
                   steps=args.steps, p95_target_s=args.p95, step_cache=args.step_cache)


def _plan(args: argparse.Namespace, orchestration) -> int:
    import yaml

    from skyreels.cli import UsageError
    from skyreels.planner.plan import Fleet, markdown, plan

    try:
        pool = {kind: int(count) for kind, count in (item.split(":") for item in args.pool.split(",") if item)}
    except ValueError as error:
        raise UsageError(f"--pool {args.pool!r}: TYPE:COUNT[,TYPE:COUNT]") from error
    prices = json.loads(args.prices.read_text()) if args.prices else {}
    traffic = _traffic(args)
    predictions = plan(Fleet(args.gpus, args.gpu_type, pool, prices), traffic, orchestration=orchestration)
    if not predictions:
        print(f"no layout of {args.gpus} x {args.gpu_type} fits its GPUs' memory at this video size",
              file=sys.stderr)
        return 1
    table = markdown(predictions, traffic)
    print(table)
    best = predictions[0]
    verdict = "meets the target" if best.meets_target else "the best there is, but it does NOT meet the target"
    print(f"best: {best.layout.name} ({best.layout.shape()}, {best.layout.precision}): {verdict}")
    if args.out is not None:
        config = best.layout.serve_config()
        header = "\n".join(f"# {line}" if line else "#" for line in [
            f"Written by: skyreels plan {' '.join(sys.argv[2:])}",
            f"Chosen: {best.layout.name} ({best.layout.shape()}, {best.layout.precision}). The planner's table:",
            "", *table.splitlines()])
        args.out.write_text(header + "\n\n" + yaml.safe_dump(config, sort_keys=False))
        print(f"wrote {args.out}")
    return 0


def _predict_config(args: argparse.Namespace, orchestration) -> int:
    from skyreels.planner.model import Arrival, ServedAppModel, quantile
    from skyreels.planner.serve_config import read
    from skyreels.sim.profile import VideoShape

    configured = read(args.config, orchestration)
    width, height = map(int, args.size.lower().split("x"))
    shape = VideoShape(height=height, width=width, num_frames=args.num_frames)
    if args.burst is not None:
        arrivals = [Arrival(0.0, shape, args.steps) for _ in range(args.burst)]
    else:
        arrivals = [Arrival(item["at_s"], shape, item.get("steps", args.steps), item.get("task", "t2v"),
                            item.get("priority", "batch")) for item in json.loads(args.workload.read_text())]
    outcome = ServedAppModel(configured.app).run(arrivals)
    done = outcome.completed
    latency = [job.latency_s for job in done]
    makespan = max(job.completed_s for job in done) - min(a.at_s for a in arrivals)
    factor = configured.time_factor
    scale = f" (wall on the sim at time factor {factor:g}; x{1 / factor:g} at real time)" if factor != 1 else ""
    print(f"{len(done)} of {len(arrivals)} videos{scale}")
    print(f"predicted makespan: {makespan * factor:.1f} s")
    print(f"p50: {quantile(latency, 0.5) * factor:.1f} s, p95: {quantile(latency, 0.95) * factor:.1f} s")
    return 0
