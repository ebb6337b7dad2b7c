"""End to end (text + DiT + VAE) seconds and peak memory: LocalPipeline vs diffusers' HunyuanVideoPipeline,
same weights, same seed, in one run.

    python benchmarks/bench_e2e.py --preset random-full --steps 30 --out benchmarks/results/e2e_h100.json
    python benchmarks/bench_e2e.py --preset tiny --height 64 --width 64 --num_frames 9 --steps 10 \
        --out benchmarks/results/e2e_tiny_cpu.json

With random-full the text encoder is random embeddings, given to diffusers as prompt_embeds.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from diffusers import HunyuanVideoPipeline

from baseline import diffusers_scheduler, diffusers_transformer, diffusers_vae, text_stage
from skyreels import GenerationRequest, LocalPipeline, Task
from skyreels.optimize import OptimizeConfig
from skyreels.random_full import RandomTextEncoderStage
from workload import Workload, add_workload_flags

T = TypeVar("T")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_flags(parser)
    parser.add_argument("--compile", action="store_true", help="regional compile in the optimised run")
    parser.add_argument("--quant", choices=["none", "auto", "fp8", "int8"], default="none")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/e2e.json"))
    args = parser.parse_args()
    workload = Workload.from_args(args)
    device, dtype, request = workload.device, workload.dtype, workload.request
    # The baseline runs first, on diffusers' own models, and is freed before the optimised pipeline is built:
    # only one DiT is on the GPU at a time.
    theirs, theirs_s, theirs_gb = _measure_diffusers(request, args, device, dtype)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    pipe = LocalPipeline.from_pretrained(args.preset, device=device, dtype=dtype,
                                         optimize=OptimizeConfig(compile=args.compile, quant=args.quant))
    ours, ours_s, ours_gb = measure(lambda: pipe.generate(request).frames, device)
    difference = np.abs(ours.astype(int) - (theirs * 255).round().astype(int))

    report = {
        **workload.report_header(),
        "workload": {**workload.describe(), "compile": args.compile, "quant": args.quant},
        "skyreels": {"seconds": ours_s, "peak_memory_gb": ours_gb},
        "diffusers": {"seconds": theirs_s, "peak_memory_gb": theirs_gb},
        "speedup": theirs_s / ours_s,
        "max_frame_diff": int(difference.max()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# End to end: {report['workload']}", "", f"Device: {report['device']}; {report['versions']}",
             f"Command: `{report['command']}`", "", "| pipeline | seconds | peak GB |", "| --- | --- | --- |",
             *[f"| {name} | {report[name]['seconds']:.2f} | {report[name]['peak_memory_gb'] or '-'} |"
               for name in ("skyreels", "diffusers")],
             "", f"Speed-up {report['speedup']:.2f}x; max frame difference {report['max_frame_diff']}/255."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _measure_diffusers(request: GenerationRequest, args: argparse.Namespace, device: str, dtype: torch.dtype):
    """diffusers' HunyuanVideoPipeline with its defaults, on the preset's weights and prompt embeddings."""
    text = text_stage(args.preset, device, dtype)
    reference = HunyuanVideoPipeline(
        text_encoder=None if isinstance(text, RandomTextEncoderStage) else text.llama,
        tokenizer=getattr(text, "llama_tokenizer", None),
        text_encoder_2=getattr(text, "clip", None),
        tokenizer_2=getattr(text, "clip_tokenizer", None),
        transformer=diffusers_transformer(args.preset, Task.T2V, device, dtype),
        vae=diffusers_vae(args.preset, device, dtype),
        scheduler=diffusers_scheduler(args.preset, Task.T2V),
    )
    positive, negative = (text.encode_prompt(p) for p in (request.prompt, request.negative_prompt))
    return measure(lambda: reference(
        prompt_embeds=positive.embeds, prompt_attention_mask=positive.mask, pooled_prompt_embeds=positive.pooled,
        negative_prompt_embeds=negative.embeds, negative_prompt_attention_mask=negative.mask,
        negative_pooled_prompt_embeds=negative.pooled, height=args.height, width=args.width,
        num_frames=args.num_frames, num_inference_steps=args.steps, true_cfg_scale=request.guidance_scale,
        guidance_scale=request.embedded_guidance_scale, generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="np",
    ).frames[0], device)


def measure(run: Callable[[], T], device: str,
            warm_up: Callable[[], object] | None = None) -> tuple[T, float, float | None]:
    """(output, seconds, peak GPU GB or None) of `run`, timed after a warm-up (default: `run` itself) that pays
    for compile, the allocator and the kernels' first loads."""
    (warm_up or run)()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    output = run()
    if device == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return output, time.perf_counter() - start, peak


if __name__ == "__main__":
    main()
