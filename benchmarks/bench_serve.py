"""Latency of one job and throughput of N concurrent jobs: staged Serve app vs LocalPipeline.

    python benchmarks/bench_serve.py --jobs 8 --out benchmarks/results/serve_tiny_cpu.json

Runs both sides in one process tree on the same machine and preset, and writes JSON + markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray
import torch

from serve_app.app import AppConfig
from serve_app.client import VideoClient
from serve_app.launch import start_local
from skyreels import GenerationRequest, LocalPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--num_frames", type=int, default=9)
    parser.add_argument("--num_inference_steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="single-job latency samples")
    parser.add_argument("--gpus_per_replica", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_tiny_cpu.json"))
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    shape = dict(height=height, width=width, num_frames=args.num_frames, num_inference_steps=args.num_inference_steps)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    pipe = LocalPipeline.from_pretrained(args.model, task="t2v", device=device)
    pipe.generate(GenerationRequest(prompt="warm-up", seed=0, **shape))
    local_latency = [_timed(lambda i=i: pipe.generate(GenerationRequest(prompt=f"single {i}", seed=i, **shape)))
                     for i in range(args.repeats)]
    start = time.perf_counter()
    for i in range(args.jobs):
        pipe.generate(GenerationRequest(prompt=f"batch {i}", seed=i, **shape))
    local_batch = time.perf_counter() - start

    data_dir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    url = start_local(AppConfig(model=args.model, device=device, dtype="bfloat16" if device == "cuda" else "float32",
                                gpus_per_replica=args.gpus_per_replica, database_path=str(data_dir / "jobs.db"),
                                artifact_url=str(data_dir / "artifacts"), max_running_jobs=4), port=8011)
    fields = dict(size=args.size, num_frames=args.num_frames, num_inference_steps=args.num_inference_steps)
    with VideoClient(url) as client:
        client.wait(client.submit("warm-up", seed=0, **fields)["id"])
        serve_latency = [_timed(lambda i=i: client.wait(client.submit(f"single {i}", seed=i, **fields)["id"]))
                         for i in range(args.repeats)]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            jobs = list(pool.map(lambda i: client.submit(f"batch {i}", seed=i, **fields), range(args.jobs)))
        finished = [client.wait(job["id"]) for job in jobs]
        serve_batch = time.perf_counter() - start
        stage_metrics = {k: statistics.median(j["metrics"][k] for j in finished) for k in finished[0]["metrics"]}
    ray.shutdown()

    result = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "versions": {"torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version()},
        "workload": {"model": args.model, **shape, "jobs": args.jobs},
        "single_job_latency_s": {"local_pipeline": statistics.median(local_latency), "serve": statistics.median(serve_latency)},
        "concurrent_jobs_wall_s": {"local_pipeline_one_by_one": local_batch, "serve_staged": serve_batch},
        "throughput_jobs_per_min": {"local_pipeline_one_by_one": 60 * args.jobs / local_batch,
                                    "serve_staged": 60 * args.jobs / serve_batch},
        "serve_stage_seconds_median": stage_metrics,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _markdown(result: dict) -> str:
    latency, wall, rate = (result[k] for k in ("single_job_latency_s", "concurrent_jobs_wall_s", "throughput_jobs_per_min"))
    return "\n".join([
        f"# Serve vs LocalPipeline ({result['workload']})",
        "",
        f"Device: {result['device']}; versions: {result['versions']}",
        f"Command: `{result['command']}`",
        "",
        "| | LocalPipeline | Serve (staged) |",
        "| --- | --- | --- |",
        f"| one job, latency (s, median) | {latency['local_pipeline']:.3f} | {latency['serve']:.3f} |",
        f"| {result['workload']['jobs']} jobs, wall (s) | {wall['local_pipeline_one_by_one']:.3f} (one by one) | {wall['serve_staged']:.3f} (submitted at once) |",
        f"| throughput (jobs/min) | {rate['local_pipeline_one_by_one']:.1f} | {rate['serve_staged']:.1f} |",
        "",
        "Serve stage seconds (median over the concurrent jobs): "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["serve_stage_seconds_median"].items()),
        "",
    ])


if __name__ == "__main__":
    main()
