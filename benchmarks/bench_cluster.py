"""Layouts of the Serve app at equal GPUs on a simulated GPU cluster, under open-loop Poisson arrivals.

    python benchmarks/bench_cluster.py                                  # every layout; about 15 minutes on 2 cores
    python benchmarks/bench_cluster.py --layouts mono-8 staged-6 --rates 30 --window 10 --no-autoscale

Each layout is cluster/serve_config.gpu8.yaml's application on the `sim` model source (GPU timings from
skyreels/sim, `--profile` to calibrate them) on one fake 8-GPU node (benchmarks/sim_cluster.py): at each
arrival rate, jobs of the workload of record (544x960, 97 frames, 30 steps, CFG 6) arrive for `--window`
seconds of sim time (at most `--max_jobs`), then the queue drains. Then the autoscaling run: the gpu8 config's
own autoscaling (its delays scaled to sim time) under a burst, with Ray's autoscaler adding 8-GPU nodes.
Writes benchmarks/results/cluster_sim.{json,md} and cluster_sim_{rates,timeline,autoscale}.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import ray
import yaml
from cluster_report import StageSeconds, markdown, queue_depth, rate_chart, summarize, timeline_chart
from ray import serve
from sim_cluster import ClusterSpec, FakeGpuCluster, Sample, Watch, deploy, sim_config
from tqdm import tqdm

from serve_app.client import VideoClient
from serve_app.launch import wait_ready
from skyreels.parallel.group import free_port
from skyreels.parallel.mesh import MeshShape
from skyreels.sim.profile import WORKLOAD, WORKLOAD_STEPS, SimProfile
from skyreels.sim.source import SimOptions

logger = logging.getLogger("bench_cluster")

ROOT = Path(__file__).resolve().parents[1]
GPU8 = ROOT / "cluster" / "serve_config.gpu8.yaml"
APP = "skyreels"
DIT_HEADS = 24
TERMINAL = {"completed", "failed", "cancelled"}
DRAIN_TIMEOUT_S = 180.0
JOB_FIELDS = ("id", "status", "created_at", "started_at", "completed_at", "metrics", "error")


@dataclass(frozen=True)
class Layout:
    """One way to spend 8 GPUs: `gangs` Denoiser gangs of `gang` GPUs, a TextEncoder and `vaes` Vae replicas on
    GPUs of their own (0: on no GPU of its own, sharing a gang's), the decode on the gang or on the Vaes."""

    name: str
    gang: int
    gangs: int
    decode_on: Literal["vae", "gang"]
    text_gpus: int
    vaes: int
    about: str

    @property
    def gpus(self) -> int:
        return self.gang * self.gangs + self.text_gpus + self.vaes

    @property
    def shape(self) -> str:
        own = ((self.text_gpus, "text"), (self.vaes, "VAE"))
        return f"{self.gangs} x gang of {self.gang}" + "".join(f" + {n} {what}" for n, what in own if n)

    def config(self, base: dict, root: Path, port: int, options: SimOptions) -> dict:
        """gpu8's application with this layout's replicas and GPUs, fixed (no autoscaling)."""
        config = sim_config(base, root, port, options.time_factor, options.profile, gpus_per_replica=self.gang,
                            decode_on=self.decode_on, max_running_jobs=3 * self.gangs, max_queued_jobs=256)
        fixed = {"TextEncoder": (1, self.text_gpus), "Denoiser": (self.gangs, 0),
                 "Vae": (max(self.vaes, 1), 1 if self.vaes else 0)}
        for deployment in config["applications"][0]["deployments"]:
            if deployment["name"] in fixed:
                deployment.pop("autoscaling_config", None)
                deployment["num_replicas"], deployment["ray_actor_options"]["num_gpus"] = fixed[deployment["name"]]
        return config

    def stage_seconds(self, profile: SimProfile) -> StageSeconds:
        mesh = MeshShape.plan(self.gang, DIT_HEADS)
        return StageSeconds(
            text=profile.text_encode_seconds / 2,  # the job's prompt; the default negative prompt is cached
            denoise=WORKLOAD_STEPS * profile.step_seconds(WORKLOAD, mesh.cfg_degree, mesh.ulysses_degree),
            decode=profile.decode_seconds(WORKLOAD, self.gang if self.decode_on == "gang" else 1))


LAYOUTS = [
    Layout("mono-8", 8, 1, "gang", 0, 0, "one gang of 8 runs every stage, as SkyReelsInfer and xDiT do"),
    Layout("mono-4x2", 4, 2, "gang", 0, 0, "two such gangs of 4"),
    Layout("mono-2x4", 2, 4, "gang", 0, 0, "four such gangs of 2 (CFG split only)"),
    Layout("staged-6", 6, 1, "vae", 1, 1, "serve_config.gpu8.yaml before this benchmark: gang of 6, text GPU, VAE GPU"),
    Layout("staged-6-gangdecode", 6, 1, "gang", 1, 1, "the same GPUs, the gang decodes (the VAE GPU encodes I2V only)"),
    Layout("staged-3x2", 3, 2, "vae", 1, 1, "two gangs of 3 (no CFG split), text GPU, VAE GPU"),
]


def poisson_arrivals(client: VideoClient, rate_per_hour: float, window_s: float, max_jobs: int, steps: int,
                     options: SimOptions, rng: random.Random, tag: str) -> list[str]:
    """Submits jobs at exponential intervals (sim time) for `window_s`; their ids."""
    per_second = rate_per_hour / 3600 / options.time_factor
    start, due, ids = time.monotonic(), 0.0, []
    while len(ids) < max_jobs:
        due += rng.expovariate(per_second)
        if due > window_s:
            break
        time.sleep(max(0.0, start + due - time.monotonic()))
        ids.append(client.submit(f"{tag} job {len(ids)}", seed=rng.randrange(2**31), num_inference_steps=steps)["id"])
    return ids


def drain(client: VideoClient, ids: list[str], timeout_s: float = DRAIN_TIMEOUT_S) -> list[dict]:
    """The jobs' final records; those still running after `timeout_s` are cancelled."""
    jobs = {job_id: client.get(job_id) for job_id in ids}
    deadline = time.monotonic() + timeout_s
    while open_ids := [i for i, job in jobs.items() if job["status"] not in TERMINAL]:
        if time.monotonic() > deadline:
            for job_id in open_ids:
                jobs[job_id] = client.cancel(job_id)
            break
        time.sleep(1.0)
        jobs |= {job_id: client.get(job_id) for job_id in open_ids}
    return list(jobs.values())


def run_layout(cluster: FakeGpuCluster, layout: Layout, base: dict, args: argparse.Namespace, options: SimOptions,
               root: Path, port: int) -> tuple[list, dict, list[dict]]:
    logger.info("%s: deploying %s", layout.name, layout.shape)
    deploy(layout.config(base, root / layout.name, port, options))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout_s=300)
    summaries, records = [], []
    with VideoClient(url) as client, Watch(cluster, APP) as watch:
        drain(client, [client.submit("warm-up", seed=0)["id"]])  # caches the negative prompt's embeddings
        for rate in tqdm(args.rates, desc=layout.name, unit="rate"):
            ids = poisson_arrivals(client, rate, args.window, args.max_jobs, args.steps, options,
                                   random.Random(args.seed), f"{layout.name} at {rate}/h")
            jobs = drain(client, ids)
            summaries.append(summarize(layout, rate, jobs, layout.stage_seconds(args.timings), options.time_factor))
            records += [{"layout": layout.name, "rate_per_hour": rate} | {key: job.get(key) for key in JOB_FIELDS}
                        for job in jobs]
        timeline = _timeline(jobs, watch.samples, options.time_factor)
    serve.delete(APP)
    return summaries, timeline, records


def run_autoscaling(cluster: FakeGpuCluster, base: dict, args: argparse.Namespace, options: SimOptions,
                    root: Path, port: int) -> tuple[dict, dict]:
    """gpu8's autoscaling config, delays scaled to sim time, under a burst: when the second gang serves."""
    config = sim_config(base, root / "autoscaling", port, options.time_factor, options.profile, max_queued_jobs=256)
    for deployment in config["applications"][0]["deployments"]:
        autoscaling = deployment.get("autoscaling_config")
        if autoscaling:
            autoscaling["max_replicas"] = min(autoscaling["max_replicas"], cluster.spec.max_gpu_nodes)
            autoscaling["upscale_delay_s"] = max(1.0, autoscaling["upscale_delay_s"] * options.time_factor)
            autoscaling["downscale_delay_s"] = min(10.0, max(1.0, autoscaling["downscale_delay_s"]
                                                              * options.time_factor))
    deploy(config)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout_s=300)
    with VideoClient(url) as client, Watch(cluster, APP) as watch:
        drain(client, [client.submit("warm-up", seed=0)["id"]])
        burst = time.time()
        ids = [client.submit(f"burst job {i}", seed=i, num_inference_steps=args.steps)["id"] for i in range(args.burst)]
        jobs = drain(client, ids)
        _wait_until(lambda: watch.samples[-1].wanted["Denoiser"] == 1 and len(watch.samples[-1].gpu_nodes) == 1,
                    60)
    serve.delete(APP)

    def first(condition, after: float | None = 0.0) -> float | None:
        """Seconds from the burst to the first sample (`after` seconds past it) where `condition` holds."""
        if after is None:
            return None
        return next((s.at - burst for s in watch.samples if s.at >= burst + after and condition(s)), None)

    figures = {
        "gang": config["applications"][0]["args"]["gpus_per_replica"],
        "decode_on": config["applications"][0]["args"]["decode_on"],
        "burst_jobs": args.burst, "completed": sum(job["status"] == "completed" for job in jobs),
        "wall_s_to_second_gang_wanted": first(lambda s: s.wanted["Denoiser"] >= 2),
        "wall_s_to_second_node": first(lambda s: len(s.gpu_nodes) >= 2),
        "wall_s_to_second_gang_serving": first(lambda s: s.running["Denoiser"] >= 2),
        "max_gangs": max(s.wanted["Denoiser"] for s in watch.samples),
        "max_nodes": max(len(s.gpu_nodes) for s in watch.samples),
        "wall_s_to_last_done": max(job["completed_at"] for job in jobs) - burst,
    }
    figures["wall_s_back_to_one_node"] = first(lambda s: len(s.gpu_nodes) == 1,
                                               after=figures["wall_s_to_second_gang_serving"])
    return figures, _timeline(jobs, [s for s in watch.samples if s.at >= burst - 1], options.time_factor)


def _timeline(jobs: list[dict], samples: list[Sample], factor: float) -> dict:
    start = min(job["created_at"] for job in jobs)
    window = [s for s in samples if s.at >= start]
    times = [(s.at - start) / factor for s in window]
    return {"queue": queue_depth(jobs, start, factor),
            "replicas": {name: (times, [s.running[name] for s in window])
                         for name in ("TextEncoder", "Denoiser", "Vae")},
            "nodes": (times, [len(s.gpu_nodes) for s in window])}


def _coarse_profile(profile: SimProfile, steps: int, root: Path) -> Path:
    """`profile` with each step as long as WORKLOAD_STEPS / steps of its own: the same GPU time in fewer steps."""
    dit_step = profile.dit_step.model_copy(
        update={"seconds_per_step": profile.dit_step.seconds_per_step * WORKLOAD_STEPS / steps})
    path = root / "profile.json"
    profile.model_copy(update={"dit_step": dit_step}).save(path)
    return path


def _wait_until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.5)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=[layout.name for layout in LAYOUTS],
                        choices=[layout.name for layout in LAYOUTS])
    parser.add_argument("--rates", nargs="+", type=float, default=[18.0, 36.0],
                        help="arrivals per hour at real-time scale, for the whole 8-GPU node")
    parser.add_argument("--window", type=float, default=50.0, help="seconds (sim time) of arrivals per rate")
    parser.add_argument("--max_jobs", type=int, default=24, help="arrivals per rate at most")
    parser.add_argument("--time_factor", type=float, default=0.03)
    parser.add_argument("--steps", type=int, default=2,
                        help="sim steps per job, each holding the gang for 30/steps real ones: on 2 CPU cores a "
                        "step's messages (a collective, progress through two hops) cost tens of ms")
    parser.add_argument("--profile", type=Path, help="a SimProfile JSON (default: published A800 figures)")
    parser.add_argument("--burst", type=int, default=12, help="jobs of the autoscaling run's burst")
    parser.add_argument("--burst_time_factor", type=float, default=0.05,
                        help="slower, so that the burst outlasts a new node and gang")
    parser.add_argument("--no-autoscale", dest="autoscale", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cluster_sim.json")
    args = parser.parse_args()
    layouts = [layout for layout in LAYOUTS if layout.name in args.layouts]
    base = yaml.safe_load(GPU8.read_text())
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    args.timings = SimOptions(profile=args.profile).timings
    options = SimOptions(time_factor=args.time_factor, profile=_coarse_profile(args.timings, args.steps, root))
    summaries, timelines, records, autoscaling, autoscale_timeline = [], {}, [], None, {}
    port = free_port()  # Serve's HTTP proxy keeps its first port
    started = time.monotonic()
    # the head holds the ingress (2 CPUs in gpu8) and whatever asks for no GPU
    with FakeGpuCluster(ClusterSpec(head_cpus=16, min_gpu_nodes=1, max_gpu_nodes=2)) as cluster:
        ray.init(address=cluster.address, log_to_driver=False)
        for layout in layouts:
            rows, timelines[f"{layout.name} at {args.rates[-1]:g}/h"], jobs = run_layout(
                cluster, layout, base, args, options, root, port)
            summaries += rows
            records += jobs
            logger.info("%s: %s", layout.name, [(s.rate_per_hour, round(s.throughput_per_hour, 1)) for s in rows])
            # what is measured so far, should a later part not finish
            _write(args, layouts, summaries, records, timelines, None, {}, time.monotonic() - started)
        if args.autoscale:
            burst_options = options.model_copy(update={"time_factor": args.burst_time_factor})
            autoscaling, timeline = run_autoscaling(cluster, base, args, burst_options, root, port)
            autoscale_timeline[f"gpu8 autoscaling, burst of {args.burst}"] = timeline
        serve.shutdown()
        ray.shutdown()
    _write(args, layouts, summaries, records, timelines, autoscaling, autoscale_timeline, time.monotonic() - started)


def _write(args, layouts, summaries, records, timelines, autoscaling, autoscale_timeline, seconds) -> None:
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    charts = {"rates": out.with_name(f"{out.stem}_rates.png"), "timeline": out.with_name(f"{out.stem}_timeline.png")}
    rate_chart(summaries, charts["rates"])
    timeline_chart(timelines, charts["timeline"])
    if autoscale_timeline:
        charts["autoscale"] = out.with_name(f"{out.stem}_autoscale.png")
        timeline_chart(autoscale_timeline, charts["autoscale"])
    profile = args.timings
    report = {
        "command": "python " + " ".join(sys.argv),
        "host": platform.node(), "ray": ray.__version__, "wall_seconds": round(seconds),
        "time_factor": args.time_factor, "sim_steps": args.steps, "profile": profile.device,
        "workload": WORKLOAD.model_dump() | {"steps": WORKLOAD_STEPS},
        "layouts": [asdict(layout) | {"shape": layout.shape, "gpus": layout.gpus,
                                      "stage_seconds": asdict(layout.stage_seconds(profile))} for layout in layouts],
        "runs": [asdict(s) for s in summaries], "autoscaling": autoscaling, "jobs": records,
        "charts": {name: path.name for name, path in charts.items()},
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    header = [f"# Layouts at 8 GPUs on the sim cluster ({profile.device})", "",
              f"`{report['command']}` ({report['wall_seconds']} s wall, Ray {ray.__version__}). Jobs of 544x960, 97 "
              f"frames, 30 steps (as {args.steps} sim steps); time factor {args.time_factor}: times are at real-time "
              "scale except overhead and orchestration (wall ms, not scaled). Busy: the sim's stage time over the "
              "replicas' time; GPUs: over all 8. Capacity: the most videos/hour the layout's bottleneck stage allows "
              "(profile arithmetic).", ""]
    header += [f"- **{layout.name}** ({layout.shape}, decode on {layout.decode_on}): {layout.about}"
               for layout in layouts]
    text = markdown(summaries, layouts, header)
    if autoscaling:
        text += "\n## Autoscaling (gpu8 config, sim at {}x)\n\n".format(args.burst_time_factor) + "\n".join(
            f"- {key}: {round(value, 1) if isinstance(value, float) else value}"
            for key, value in autoscaling.items()) + "\n"
    out.with_suffix(".md").write_text(text)
    logger.info("wrote %s, %s and %s", out, out.with_suffix(".md"), ", ".join(str(p) for p in charts.values()))


if __name__ == "__main__":
    main()
