"""`benchmarks/gpu/run.sh quick`: every GPU figure of DESIGN.md in one call of at most 8 minutes on one H100.

    benchmarks/gpu/run.sh quick             random-full at 544x960x97 on the GPU (bf16)
    benchmarks/gpu/run.sh quick --dry-run   the same code on the tiny preset, CPU, float32, in seconds

Parts run in the order of their value, each in its own process under a time limit, so a run cut short still
leaves the figures that matter most; a part that fails or cannot run here is recorded with its reason and the
next one starts. After every part, $OUT/quick.json and quick.md (quick_dry_run.* in the dry run) hold all that
is known so far; the end-to-end part also writes the sim preset's timing profile (quick_sim_profile.json).

Expected seconds per part on one H100 (SXM, 989 TFLOP/s dense bf16) from the arithmetic: one step is two
forwards of 2.61e15 FLOPs (73 % attention, 27 % matmuls); matmuls at ~650 TFLOP/s take 2.2 s per step, the
attention 3.81e15 FLOPs at ~250 (diffusers' masked SDPA) / ~350 (PyTorch's flash) / ~550 (cuDNN) TFLOP/s;
regional compile ~40 s (~60 s with fp8 tensors); building random weights ~3 s; each part's process imports
diffusers, transformers and skyreels itself, ~4 s (its server preloads only torch). A part is not started when
fewer seconds are left than it is expected to need, and the plan's expected seconds stay under PLAN_SHARE of the
budget (run.sh's installs and a part running long come out of the rest). Not in the plan, for want of time: SDPA's
cuDNN attention (`run.sh dit-base` compares it with the other exact kernels) and a Serve job (it needs Ray, which
neither the GPU image nor fetch_wheels.sh brings; the dry run and the tests run the app).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from part_runner import PartResult, PartRunner
from quick_settings import DRY_RUN, GPU, QuickSettings
from quick_report import judge, markdown

from skyreels.sim.profile import DitStepSeconds, PixelScaledSeconds, SimProfile, VideoShape

logger = logging.getLogger("quick")

# imported once by the server every part forks from (this process never imports torch). Only torch: a process that
# asked CUDA anything before the fork, even torch.cuda.is_available(), leaves the parts "Cannot re-initialize CUDA in
# forked subprocess", and quick_parts' imports ask (torchao's import-time capability checks, reached through
# diffusers; attention kernels' imports on a GPU host). Each part imports quick_parts itself, a few seconds.
PRELOAD = ["torch"]
PACKAGES = ("torch", "diffusers", "transformers", "torchao", "pydantic", "ray", "flash-attn", "flash-attn-3",
            "sageattention", "triton", "imageio-ffmpeg")
REPORT_RESERVE_S = 5.0  # left at the end for the report
PLAN_SHARE = 0.85  # of the budget, at most, that the parts are expected to take


@dataclass(frozen=True)
class Part:
    name: str
    function: str  # in quick_parts, which imports torch: only the parts' processes load it
    args: tuple
    expected_s: float  # on one H100 (module docstring); the dry run takes seconds
    timeout_s: float  # enough for the dry run on two busy CPU cores too


def plan(settings: QuickSettings) -> list[Part]:
    """The parts, most valuable first: lossless vs diffusers, fp8, memory, cache, e2e, weight swap. Each DiT
    variant: a warm-up step (with the compile) and `measure_steps` timed steps."""
    steps = settings.measure_steps
    return [
        # ~4 s imports, the CUDA context ~2 s, which attention kernels run
        Part("environment", "environment", (settings,), 10, 120),
        # 4 + 3 + 2 steps x (2.2 s matmuls + 3.81e15 / 250e12 = 15.2 s masked attention + ~0.6 s two unbatched
        # forwards)
        Part("dit_diffusers", "dit_variant", (settings, "diffusers", steps), 45, 130),
        # 4 + 3 + 40 s compile + 2 steps x (2.2 + 3.81e15 / 350e12 = 10.9 s), ~8.5 s a step with FA3
        Part("dit_lossless", "dit_variant", (settings, "lossless", steps), 75, 170),
        # 4 + 3 + 5 s quantise + 60 s compile + 2 steps x (1.3 s fp8 matmuls + 10.9 s attention)
        Part("dit_fp8_dynamic", "dit_variant", (settings, "fp8-dynamic", steps), 100, 150),
        # 4 + 3 + 10 s pinning 26 GB + 2 steps x 13.5 s (no compile, blocks streamed under the compute)
        Part("memory_offload", "dit_variant", (settings, "offload", 1), 45, 90),
        # 4 + 544x960x9: 6,120 tokens, 2.2e14 FLOPs a step, ~0.45 s; 2 + 30 exact + 30 cached steps
        Part("step_cache", "step_cache", (settings,), 35, 75),
        # 4 + 5 s build + warm-up + 1 step 13.5 s + ~20 s tiled decode of 97 frames + ~3 s mux + encode
        Part("end_to_end", "end_to_end", (settings,), 50, 120),
        # 4 + 2 x 6.3 GB random slices made on the GPU, ~3 s pinning, 6 swaps at ~50 GB/s
        Part("weight_swap", "weight_swap", (settings,), 25, 90),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--dry-run", action="store_true", help="tiny preset, CPU, float32: the code path in seconds")
    parser.add_argument("--budget_s", type=float, default=470, help="seconds the parts may take in all")
    parser.add_argument("--command", default="benchmarks/gpu/run.sh quick", help="the command to report")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = DRY_RUN if args.dry_run else GPU
    prefix = "quick_dry_run" if args.dry_run else "quick"
    args.out.mkdir(parents=True, exist_ok=True)
    parts = plan(settings)
    planned_s = sum(part.expected_s for part in parts)
    if planned_s > PLAN_SHARE * args.budget_s:
        logger.warning("the parts are expected to take %.0f s, more than %.0f %% of the %.0f s budget: the last ones "
                       "may not run", planned_s, 100 * PLAN_SHARE, args.budget_s)
    report = {
        "command": args.command, "mode": settings.mode, "started_at": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": 0.0, "budget_seconds": args.budget_s, "environment": host_environment(),
        "settings": asdict(settings), "expected_seconds": {part.name: part.expected_s for part in parts},
        "parts": {}, "targets": [], "sim_profile": None,
    }
    start = time.monotonic()
    deadline = start + args.budget_s - REPORT_RESERVE_S
    with tempfile.TemporaryDirectory(prefix="quick-parts-") as scratch:
        runner = PartRunner(PRELOAD, Path(scratch))
        for part in parts:
            result = run_within(runner, part, deadline - time.monotonic())
            logger.info("part %s: %s in %.1f s %s", part.name, result.status, result.wall_seconds, result.reason or "")
            report["parts"][part.name] = result.model_dump()
            if part.name == "end_to_end" and result.status == "ok":
                try:
                    report["sim_profile"] = write_sim_profile(report, args.out / f"{prefix}_sim_profile.json")
                except Exception as error:  # noqa: BLE001 - the parts after this one still run
                    logger.exception("the sim profile could not be built")
                    report["sim_profile"] = {"error": repr(error)}
            report["wall_seconds"] = time.monotonic() - start
            write_report(report, args.out / f"{prefix}.json")
    if any(part["status"] in ("failed", "timed_out") for part in report["parts"].values()):
        sys.exit(1)


def run_within(runner: PartRunner, part: Part, left_s: float) -> PartResult:
    """The part, limited to what is left of the budget; not started when it would not fit."""
    if left_s < part.expected_s:
        return PartResult(name=part.name, status="skipped", wall_seconds=0.0,
                          reason=f"out of time: {left_s:.0f} s left, it needs about {part.expected_s:.0f} s")
    timeout_s = min(part.timeout_s, left_s)
    logger.info("part %s (expected %.0f s, limit %.0f s)", part.name, part.expected_s, timeout_s)
    return runner.run(part.name, f"quick_parts:{part.function}", part.args, timeout_s)


def write_report(report: dict, path: Path) -> None:
    parts = {name: PartResult.model_validate(part) for name, part in report["parts"].items()}
    report["targets"] = judge(parts, judged=report["mode"] == "gpu")
    path.write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(report))


def write_sim_profile(report: dict, path: Path) -> dict:
    """The sim preset's timings from the end-to-end video, with the DiT step of the lossless part where it ran
    (the path the one-GPU Serve config runs: compile and the best exact kernel); the job it predicts for the
    workload of record."""
    e2e = report["parts"]["end_to_end"]["figures"]
    lossless = report["parts"].get("dit_lossless", {})
    e2e_shape = VideoShape(**{key: e2e["workload"][key] for key in ("height", "width", "num_frames")})
    if lossless.get("status") == "ok":
        dit = lossless["figures"]
        dit_step = DitStepSeconds(seconds_per_step=dit["seconds_per_step"], measured_at=VideoShape(**_shape(report)),
                                  prompt_tokens=dit["prompt_tokens"], transformer_config=e2e["transformer_config"],
                                  path=f"lossless {dit['options']}")
    else:
        dit_step = DitStepSeconds(seconds_per_step=e2e["dit_seconds_per_step"], measured_at=e2e_shape,
                                  prompt_tokens=e2e["prompt_tokens"], transformer_config=e2e["transformer_config"],
                                  path="LocalPipeline defaults (the lossless part did not run)")
    stages = e2e["stage_seconds"]
    profile = SimProfile(
        device=report["parts"]["environment"]["figures"].get("device", "unknown"),
        measured_by=report["command"], text_encode_seconds=stages["text_encode"], dit_step=dit_step,
        vae_encode=PixelScaledSeconds(seconds=stages["image_encode"], measured_at=e2e_shape.first_frame()),
        vae_decode=PixelScaledSeconds(seconds=stages["decode"], measured_at=e2e_shape),
        mux=PixelScaledSeconds(seconds=stages["mux"], measured_at=e2e_shape),
        notes=["random-full's text stage is random embeddings: text_encode_seconds is not LLaMA-3-8B + CLIP-L"]
        if report["settings"]["preset"] == "random-full" else [],
    )
    profile.save(path)
    workload = VideoShape(**_shape(report))
    steps = report["settings"]["video_steps"]
    return {"file": path.name, "job": {"shape": workload.model_dump(), "steps": steps,
                                       "seconds": profile.job_seconds(workload, steps, i2v=False)}}


def _shape(report: dict) -> dict:
    return {key: report["settings"][key] for key in ("height", "width", "num_frames")}


def host_environment() -> dict:
    """What the host says without touching CUDA (the parts do that): the GPU and driver, packages, commit."""
    return {
        "nvidia_smi": _output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]),
        "git_commit": _output(["git", "rev-parse", "HEAD"]),
        "hostname": platform.node(),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _output(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
