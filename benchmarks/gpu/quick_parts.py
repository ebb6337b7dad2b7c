"""The measurements of `benchmarks/gpu/run.sh quick`, one function per part; each returns its figures.

They reuse the benchmark scripts' own pieces (bench_dit's variants and VariantRun, bench_step_cache's threshold
rows, bench_e2e's measure) with the settings of one mode: the workload of record on a GPU, or the tiny preset on
the CPU for the dry run, which goes through the same code in seconds.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from bench_dit import VariantRun, matmul_floor_seconds, unrunnable_reason, variants
from bench_e2e import measure
from bench_step_cache import threshold_rows
from bench_weight_swap import maker as swap_models
from bench_weight_swap import measure as measure_swap
from bench_weight_swap import parameter_count
from baseline import diffusers_transformer_config
from part_runner import PartSkipped
from quick_settings import QuickSettings
from skyreels import GenerationRequest, LocalPipeline, Task, random_full
from skyreels.optimize.attention import unusable_reason
from workload import Workload

logger = logging.getLogger(__name__)

ATTENTION_KERNELS = ("_flash_3", "flash", "sage", "_native_cudnn", "native")


def _workload(settings: QuickSettings, steps: int | None = None, num_frames: int | None = None) -> Workload:
    return Workload.create(settings.preset, settings.height, settings.width, num_frames or settings.num_frames,
                           steps or settings.video_steps, device=settings.device)


def environment(settings: QuickSettings) -> dict:
    """The device as torch sees it, and which attention kernels it can run."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available to torch")
    figures = {"device": _workload(settings).device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
               "python": sys.version.split()[0]}
    if settings.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        figures |= {"compute_capability": f"{properties.major}.{properties.minor}",
                    "memory_gb": properties.total_memory / 2**30}
    device = torch.device(settings.device)
    figures["attention_kernels"] = {name: unusable_reason(name, device) or "usable" for name in ATTENTION_KERNELS}
    return figures


def dit_variant(settings: QuickSettings, variant: str, measure_steps: int) -> dict:
    """bench_dit's variant on the workload: seconds per step, extrapolated to the video, peak memory and MFU."""
    reason = unrunnable_reason(variant, settings.device)
    if reason:
        raise PartSkipped(reason)
    run = VariantRun.prepare(_workload(settings), measure_steps)
    options, batch_cfg = variants(settings.cache_threshold, settings.device)[variant]
    row = run.measure(variant, options.model_copy(update={"compile": options.compile and settings.compile}),
                      batch_cfg)
    return {**row, "measured_steps": measure_steps, "video_steps": settings.video_steps,
            "prompt_tokens": run.prompt_tokens, "flops_per_forward": run.flops_per_forward,
            "matmul_floor_seconds_per_video": matmul_floor_seconds(run.flops_per_forward, settings.video_steps)}


def step_cache(settings: QuickSettings) -> dict:
    """The First-Block cache at one threshold against the exact video, whole videos of a short shape."""
    workload = _workload(settings, steps=settings.cache_steps, num_frames=settings.cache_num_frames)
    exact, cached = threshold_rows(workload, [settings.cache_threshold], decode=False)
    return {"workload": workload.describe(), "exact": exact, "cached": cached,
            "skip_rate": cached["skipped_forwards"] / cached["forwards"]}


def end_to_end(settings: QuickSettings) -> dict:
    """One short video through LocalPipeline (text, DiT, tiled VAE), warmed up on a small one; then the VAE
    encode of an I2V first frame and the mp4 mux: every stage the sim profile needs."""
    workload = _workload(settings, steps=settings.e2e_steps)
    request, device = workload.request, workload.device
    pipe = LocalPipeline.from_pretrained(settings.preset, device=device, dtype=workload.dtype)
    # another prompt: the timed video encodes its prompt (the negative one is cached, as in the service)
    small = GenerationRequest(prompt="warm-up", height=64, width=64, num_frames=9, num_inference_steps=1, seed=0)
    result, seconds, peak_gb = measure(lambda: pipe.generate(request), device, warm_up=lambda: pipe.generate(small))
    image = Image.fromarray(result.frames[0])
    _, encode_seconds, _ = measure(lambda: pipe.vae.encode_image(image, request.height, request.width, 0), device)
    start = time.perf_counter()
    mp4 = result.to_mp4()
    mux_seconds = time.perf_counter() - start
    conditioning = pipe.text.encode(request.prompt, request.negative_prompt)
    return {
        "workload": workload.describe(), "seconds": seconds, "peak_memory_gb": peak_gb,
        "stage_seconds": {**result.timings, "image_encode": encode_seconds, "mux": mux_seconds},
        "dit_seconds_per_step": result.timings["denoise"] / request.num_inference_steps,
        "prompt_tokens": int(conditioning.positive.mask.sum()),
        "transformer_config": diffusers_transformer_config(settings.preset, Task.T2V),
        "mp4_bytes": len(mp4),
    }


def weight_swap(settings: QuickSettings) -> dict:
    """A gang rank putting the other model's transformer weights in place (T2V -> I2V -> T2V), from pinned host
    memory on a GPU; seconds per GB, extrapolated to the whole transformer."""
    dtype = torch.bfloat16
    full_gb = parameter_count(random_full.transformer_config(Task.I2V)) * dtype.itemsize / 1e9
    with tempfile.TemporaryDirectory(prefix="quick-swap-") as scratch:
        return measure_swap(settings.swap_size, swap_models(settings.swap_size, Path(scratch), dtype), settings.device,
                            settings.device == "cuda", 3, full_gb)
