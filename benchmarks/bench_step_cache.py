"""Step cache: speed and quality against the uncached video, threshold by threshold, on one model.

    python benchmarks/bench_step_cache.py --preset random-full --thresholds 0.1 --out benchmarks/results/step_cache_h100.json
    python benchmarks/bench_step_cache.py --preset tiny --height 64 --width 64 --num_frames 9 --steps 20 \
        --thresholds 0.3,0.5,0.9 --decode --out benchmarks/results/step_cache_tiny_cpu.json

The DiT runs each video once with the First-Block cache at threshold 0 (it never skips: the exact video)
and once per threshold. Quality is the PSNR of the latents against the exact ones (peak: their range),
and with --decode of the decoded frames too. No compile, so that the ratio shows the skipping alone.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from skyreels import LocalPipeline
from skyreels.optimize import OptimizeConfig
from skyreels.optimize.cache import step_cache_hook
from skyreels.quality import psnr_db
from skyreels.stages.denoise import DenoiseParams
from tables import threshold_table
from workload import Workload, add_workload_flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_flags(parser)
    parser.add_argument("--thresholds", default="0.05,0.1", help="comma-separated")
    parser.add_argument("--decode", action="store_true", help="also decode every video and compare the frames")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_cache.json"))
    args = parser.parse_args()
    workload = Workload.from_args(args)
    rows = threshold_rows(workload, [float(t) for t in args.thresholds.split(",")], args.decode)

    report = {
        **workload.report_header(),
        "workload": {**workload.describe(), "cfg": "true CFG, 2 branches in one batch"},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Step cache: {report['workload']}", "", f"Device: {report['device']}; {report['versions']}",
             f"Command: `{report['command']}`", "", *threshold_table(rows)]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def threshold_rows(workload: Workload, thresholds: list[float], decode: bool) -> list[dict]:
    """The workload's video exact (threshold 0: the cache never skips) and at each threshold, on one model, after
    a 2-step warm-up."""
    request, device = workload.request, workload.device
    pipe = LocalPipeline.from_pretrained(workload.preset, device=device, dtype=workload.dtype,
                                         optimize=OptimizeConfig(step_cache_threshold=0.0))
    conditioning = pipe.text.encode(request.prompt, request.negative_prompt)
    params = DenoiseParams.from_request(request)
    hook = step_cache_hook(pipe.denoise.transformer)

    def video(threshold: float, steps: int = request.num_inference_steps) -> dict:
        hook.threshold = threshold
        start = time.perf_counter()
        latents = pipe.denoise.denoise(conditioning, replace(params, num_inference_steps=steps))
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return {"threshold": threshold, "seconds": seconds, "skipped_forwards": hook.skips,
                "forwards": hook.forwards, "latents": latents.float().cpu(),
                "frames": pipe.vae.decode(latents) if decode else None}

    video(0.0, steps=2)  # warm-up: allocator, kernels
    exact = video(0.0)
    peak = float(exact["latents"].max() - exact["latents"].min())
    rows = []
    for threshold in [0.0, *thresholds]:
        run = exact if threshold == 0.0 else video(threshold)
        rows.append({
            "threshold": threshold, "seconds_per_video": run["seconds"], "speedup": exact["seconds"] / run["seconds"],
            "skipped_forwards": run["skipped_forwards"], "forwards": run["forwards"],
            "latent_psnr_db": psnr_db(run["latents"], exact["latents"], peak),
            "max_abs_diff_latents": float((run["latents"] - exact["latents"]).abs().max()),
            "frame_psnr_db": psnr_db(run["frames"], exact["frames"], 255.0) if decode else None,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
