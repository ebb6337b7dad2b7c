"""Every speed/memory option once on the tiny preset, against the unoptimised run in the same process.

    python benchmarks/bench_options.py --out benchmarks/results/options_tiny_cpu.json

Reports seconds per video, max |latents - baseline| and PSNR of the frames against the baseline, and checks
each PSNR against the option's stated bound: the exit status is 1 when one falls below.
On a GPU, `--dtype bfloat16 --cpu_reference` adds the unoptimised run on the CPU in float32, compared with
the GPU baseline: the correctness check of the GPU path (benchmarks/gpu/run.sh check).
Speed figures come from bench_dit.py / bench_e2e.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from skyreels import GenerationRequest, LocalPipeline
from skyreels.optimize import OptimizeConfig
from skyreels.optimize.quant import has_fp8_tensor_cores
from skyreels.quality import psnr_db

# option -> (OptimizeConfig fields, lowest PSNR of the frames against the baseline, dB). The bounds leave room
# for bf16 on a GPU, where fused kernels round differently; a broken option lands near 15 dB (another seed).
OPTIONS: dict[str, tuple[dict, float]] = {
    "baseline": ({}, float("inf")),
    "quant int8": ({"quant": "int8"}, 35.0),
    "quant fp8": ({"quant": "fp8"}, 35.0),
    "quant fp8-dynamic (fp8 tensor cores only)": ({"quant": "fp8-dynamic"}, 35.0),
    "offload (model level)": ({"offload": True}, 50.0),
    "parameters_level (block streaming)": ({"block_offload": True, "high_cpu_memory": True}, 50.0),
    "compile (regional)": ({"compile": True}, 35.0),
    "attention sage (falls back to SDPA if missing)": ({"attention_backend": "sage"}, 35.0),
    # the tiny DiT has 2 blocks and random weights: its first block changes a lot between steps, so
    # only high thresholds skip anything here (0.05-0.1 is the range for the real model)
    "step cache 0.5": ({"step_cache_threshold": 0.5}, 35.0),
    "step cache 0.9": ({"step_cache_threshold": 0.9}, 30.0),
}
CPU_REFERENCE_MIN_PSNR_DB = 30.0  # the GPU's bf16 baseline against the CPU's float32 run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--num_frames", type=int, default=9)
    parser.add_argument("--num_inference_steps", type=int, default=20)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--cpu_reference", action="store_true",
                        help="also run the unoptimised pipeline on the CPU in float32 and compare it with the baseline")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/options_tiny_cpu.json"))
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    width, height = map(int, args.size.split("x"))
    request = GenerationRequest(prompt="a cat walks on the grass", height=height, width=width,
                                num_frames=args.num_frames, num_inference_steps=args.num_inference_steps, seed=42)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    has_fp8 = has_fp8_tensor_cores(torch.device(device))
    rows, baseline = [], None
    for name, (options, min_psnr) in OPTIONS.items():
        if options.get("quant") == "fp8-dynamic" and not has_fp8:
            print(f"{name}: skipped, no fp8 tensor cores here", flush=True)
            continue
        pipe = LocalPipeline.from_pretrained(args.model, device=device, dtype=dtype, optimize=OptimizeConfig(**options))
        result, seconds = _timed_generate(pipe, request)
        baseline = baseline or result
        rows.append(_row(name, seconds, result, baseline, min_psnr))
        print(rows[-1], flush=True)
        del pipe
    if args.cpu_reference:
        result, seconds = _timed_generate(LocalPipeline.from_pretrained(args.model), request)
        rows.append(_row("baseline on CPU, float32 (reference)", seconds, result, baseline, CPU_REFERENCE_MIN_PSNR_DB))
        print(rows[-1], flush=True)
    report = {
        "command": f"python {' '.join(sys.argv)}",
        "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU {platform.machine()}, {torch.get_num_threads()} threads",
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()},
        "workload": {"model": args.model, "size": args.size, "num_frames": args.num_frames,
                     "num_inference_steps": args.num_inference_steps, "dtype": args.dtype},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Options on {args.model} ({report['workload']})", "",
             f"Device: {report['device']}; versions: {report['versions']}; command: `{report['command']}`", "",
             "| option | s/video | max abs diff latents | PSNR vs baseline (dB) | bound (dB) | within |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['option']} | {r['seconds']:.3f} | {r['max_abs_diff_latents']:.2e} | {r['psnr_db']:.1f} | "
              f"{r['min_psnr_db']:.0f} | {'yes' if r['within_bound'] else 'NO'} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not all(r["within_bound"] for r in rows):
        sys.exit(1)


def _timed_generate(pipe: LocalPipeline, request: GenerationRequest):
    pipe.generate(request)  # warm-up (compiles, caches)
    start = time.perf_counter()
    result = pipe.generate(request)
    return result, time.perf_counter() - start


def _row(name: str, seconds: float, result, baseline, min_psnr: float) -> dict:
    quality = psnr_db(result.frames, baseline.frames)
    return {
        "option": name, "seconds": seconds,
        "max_abs_diff_latents": (result.latents.float() - baseline.latents.float()).abs().max().item(),
        "psnr_db": quality, "min_psnr_db": min_psnr, "within_bound": bool(quality >= min_psnr),
    }


if __name__ == "__main__":
    main()
