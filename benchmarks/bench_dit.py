"""DiT seconds per step and per 30-step CFG video, peak memory and MFU, optimised vs diffusers' default.

GPU (the workload of record, one command, all variants in one run beside the baseline):

    python benchmarks/bench_dit.py --preset random-full --out benchmarks/results/dit_h100.json

CPU check of the harness: python benchmarks/bench_dit.py --preset tiny --height 64 --width 64 \
    --num_frames 9 --measure_steps 3 --steps 20 --out benchmarks/results/dit_tiny_cpu.json

Variants (each a fresh model, same random weights and inputs):
  diffusers   diffusers' transformer as loaded (its forward and masked attention) in its pipeline's call pattern:
              two CFG forwards per step, no compile
  lossless    our mask-free joint attention, both CFG branches in one batch, regional torch.compile, the best
              installed attention kernel
  cudnn       lossless with PyTorch SDPA forced to its cuDNN kernel (CUDA only)
  fp8         lossless + fp8 weight-only quantisation (int8 where the GPU has no fp8)
  fp8-dynamic lossless + fp8 weights and activations (fp8 tensor cores) + SageAttention when installed
  cache       lossless + First-Block step cache (threshold --cache_threshold), timed over every step
  offload     block-level streaming from pinned host memory (peak memory is the figure of interest)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from baseline import diffusers_scheduler, diffusers_transformer, diffusers_transformer_config, text_stage
from skyreels import LocalPipeline, Task
from skyreels.optimize import OptimizeConfig
from skyreels.optimize.attention import unusable_reason
from skyreels.optimize.flops import dit_forward_flops, peak_tflops, video_tokens
from skyreels.optimize.quant import has_fp8_tensor_cores
from skyreels.stages.conditioning import Conditioning
from skyreels.stages.denoise import DenoiseParams, DenoiseStage
from tables import variant_table
from workload import Workload, add_workload_flags

logger = logging.getLogger("bench_dit")


WARMUP_VIDEO_STEPS = 3


def best_attention(candidates: tuple[str, ...], device: str) -> str:
    return next(name for name in candidates if unusable_reason(name, torch.device(device)) is None)


def variants(cache_threshold: float, device: str) -> dict[str, tuple[OptimizeConfig, bool]]:
    """name -> (options, CFG branches batched)."""
    exact_kernel = best_attention(("_flash_3", "flash", "native"), device)
    lossless = dict(compile=True, attention_backend=exact_kernel)
    return {
        "diffusers": (OptimizeConfig(), False),
        "lossless": (OptimizeConfig(**lossless), True),
        "cudnn": (OptimizeConfig(compile=True, attention_backend="_native_cudnn"), True),
        "fp8": (OptimizeConfig(**lossless, quant="auto"), True),
        "fp8-dynamic": (OptimizeConfig(compile=True, quant="fp8-dynamic",
                                       attention_backend=best_attention(("sage", exact_kernel), device)), True),
        "cache": (OptimizeConfig(**lossless, step_cache_threshold=cache_threshold), True),
        "offload": (OptimizeConfig(block_offload=True, high_cpu_memory=True), True),
    }


def unrunnable_reason(variant: str, device: str) -> str | None:
    """Why this device cannot run the variant (cuDNN attention needs CUDA, fp8-dynamic fp8 tensor cores)."""
    if variant == "cudnn" and device != "cuda":
        return "needs CUDA (SDPA's cuDNN kernel)"
    if variant == "fp8-dynamic" and not has_fp8_tensor_cores(torch.device(device)):
        return "needs CUDA with fp8 tensor cores (Ada or Hopper)"
    return None


def default_variants(device: str) -> list[str]:
    """Every variant this device can run."""
    return [name for name in variants(0.0, device) if unrunnable_reason(name, device) is None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_flags(parser)
    parser.add_argument("--measure_steps", type=int, default=3, help="timed steps per variant (after a 1-step warm-up; cache: whole videos)")
    parser.add_argument("--variants", help="comma-separated; default: every variant this device can run")
    parser.add_argument("--cache_threshold", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dit.json"))
    args = parser.parse_args()
    workload = Workload.from_args(args)
    run = VariantRun.prepare(workload, args.measure_steps)
    device = workload.device

    rows = []
    for name in args.variants.split(",") if args.variants else default_variants(device):
        options, batch_cfg = variants(args.cache_threshold, device)[name]
        try:
            row = run.measure(name, options, batch_cfg)
        except Exception as error:  # noqa: BLE001 - one variant failing must not lose the others' figures
            logger.exception("variant %s failed", name)
            row = {"variant": name, "options": options.model_dump(mode="json"), "error": repr(error)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    report = {
        **workload.report_header(),
        "workload": {**workload.describe(), "cfg": "true CFG, 2 branches", "prompt_tokens": run.prompt_tokens},
        "flops_per_forward": run.flops_per_forward,
        "matmul_floor_seconds_at_790_tflops": matmul_floor_seconds(run.flops_per_forward, args.steps),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    if any("error" in row for row in rows):
        sys.exit(1)


@dataclass(frozen=True)
class VariantRun:
    """What every variant is measured on: the same preset, inputs and FLOP count."""

    preset: str
    device: str
    dtype: torch.dtype
    conditioning: Conditioning
    params: DenoiseParams
    steps: int
    measure_steps: int
    prompt_tokens: int
    flops_per_forward: float
    peak_tflops: float | None

    @classmethod
    def prepare(cls, workload: Workload, measure_steps: int) -> VariantRun:
        """The workload's prompt embeddings and FLOP count, for `measure_steps` timed steps per variant."""
        request = workload.request
        conditioning = text_stage(workload.preset, workload.device, workload.dtype).encode(
            request.prompt, request.negative_prompt)
        # the work the model needs: the prompt's real tokens (diffusers also computes the padding, masked)
        prompt_tokens = int(conditioning.positive.mask.sum())
        config = diffusers_transformer_config(workload.preset, Task.T2V)
        video = video_tokens(config, request.height, request.width, request.num_frames)
        return cls(workload.preset, workload.device, workload.dtype, conditioning, DenoiseParams.from_request(request),
                   request.num_inference_steps, measure_steps, prompt_tokens,
                   dit_forward_flops(config, video, prompt_tokens), peak_tflops(workload.device_name()))

    @property
    def flops_per_step(self) -> float:
        return 2 * self.flops_per_forward  # true CFG: two branches per step

    def measure(self, name: str, options: OptimizeConfig, batch_cfg: bool) -> dict:
        if name == "diffusers":
            stage = DenoiseStage(diffusers_transformer(self.preset, Task.T2V, self.device, self.dtype),
                                 diffusers_scheduler(self.preset, Task.T2V), batch_cfg=False)
        else:
            stage = LocalPipeline.from_pretrained(self.preset, device=self.device, dtype=self.dtype, optimize=options,
                                                  sequence_batch=not batch_cfg).denoise
        # Skipping shows only over a whole video, and under compile the cache's hooks settle their graphs only
        # in the second video (its reset state guards differently): the cache variant warms up on two short
        # videos and times a whole one; the others warm up on one step.
        whole_video = name == "cache"
        for _ in range(2 if whole_video else 1):
            _time_steps(stage, self.conditioning, self.params, WARMUP_VIDEO_STEPS if whole_video else 1, self.device)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step_times = _time_steps(stage, self.conditioning, self.params,
                                 self.steps if whole_video else self.measure_steps, self.device)
        per_step = sum(step_times) / len(step_times)
        achieved = self.flops_per_step / per_step
        return {
            "variant": name, "options": options.model_dump(mode="json"), "cfg_batched": batch_cfg,
            "seconds_per_step": per_step, "seconds_per_video": per_step * self.steps,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if self.device == "cuda" else None,
            "achieved_tflops": achieved / 1e12,
            "mfu": achieved / (self.peak_tflops * 1e12) if self.peak_tflops else None,
        }


@torch.inference_mode()
def _time_steps(stage, conditioning, params: DenoiseParams, steps: int, device: str) -> list[float]:
    """Seconds of each step of a `steps`-step video."""
    params = DenoiseParams(**{**params.__dict__, "num_inference_steps": steps})
    times, last = [], time.perf_counter()
    for _progress, _latents in stage.steps(conditioning, params):
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def markdown(report: dict) -> str:
    lines = [
        f"# DiT benchmark: {report['workload']}",
        "",
        f"Device: {report['device']}; versions: {report['versions']}",
        f"Command: `{report['command']}`",
        f"FLOPs per forward (counted from the config): {report['flops_per_forward']:.3e}; bf16 matmul floor for "
        f"the video at 790 TFLOP/s: {report['matmul_floor_seconds_at_790_tflops']:.0f} s",
        "",
        *variant_table(report["rows"]),
    ]
    return "\n".join(lines) + "\n"


def matmul_floor_seconds(flops_per_forward: float, steps: int) -> float:
    """bf16 matmul time of a true-CFG video at DESIGN.md's 790 TFLOP/s on one H100."""
    return 2 * steps * flops_per_forward / 790e12


if __name__ == "__main__":
    main()
