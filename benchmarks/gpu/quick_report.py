"""The report of `quick`: DESIGN.md's GPU targets judged from the parts' figures, and the markdown of it all."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from part_runner import PartResult
from tables import threshold_table, variant_table

DIT_PARTS = {"dit_diffusers": "diffusers", "dit_lossless": "lossless",
             "dit_fp8_dynamic": "fp8-dynamic", "memory_offload": "offload"}
LOSSLESS_PARTS = ("dit_lossless",)
PREDICTIONS = Path(__file__).with_name("preflight_predictions.json")  # made by preflight_predictions.py


@dataclass(frozen=True)
class Target:
    """One line of DESIGN.md's "Performance yardsticks": what is measured, and whether it meets the goal."""

    goal: str
    measure: Callable[[dict[str, dict]], tuple[str, bool] | None]  # figures of ok parts -> (measured, met)


def _best_lossless(ok: dict[str, dict]) -> dict | None:
    rows = [ok[name] for name in LOSSLESS_PARTS if name in ok]
    return min(rows, key=lambda row: row["seconds_per_step"]) if rows else None


def _lossless_time(ok: dict[str, dict]) -> tuple[str, bool] | None:
    best = _best_lossless(ok)
    return (f"{best['seconds_per_video']:.0f} s ({best['variant']})", best["seconds_per_video"] <= 250) if best else None


def _lossless_speedup(ok: dict[str, dict]) -> tuple[str, bool] | None:
    best = _best_lossless(ok)
    if best is None or "dit_diffusers" not in ok:
        return None
    speedup = ok["dit_diffusers"]["seconds_per_step"] / best["seconds_per_step"]
    return f"{speedup:.2f}x ({best['variant']})", speedup >= 2


def _fp8_time(ok: dict[str, dict]) -> tuple[str, bool] | None:
    row = ok.get("dit_fp8_dynamic")
    return (f"{row['seconds_per_video']:.0f} s", row["seconds_per_video"] <= 150) if row else None


def _step_cache(ok: dict[str, dict]) -> tuple[str, bool] | None:
    cached = ok["step_cache"]["cached"] if "step_cache" in ok else None
    if cached is None:
        return None
    return (f"{cached['speedup']:.2f}x at {cached['latent_psnr_db']:.1f} dB latent PSNR, "
            f"{cached['skipped_forwards']}/{cached['forwards']} forwards skipped (short run)",
            cached["speedup"] >= 2 and cached["latent_psnr_db"] >= 30)


def _offload_memory(ok: dict[str, dict]) -> tuple[str, bool] | None:
    peak = ok["memory_offload"]["peak_memory_gb"] if "memory_offload" in ok else None
    return (f"{peak:.1f} GB peak", peak <= 24) if peak is not None else None


TARGETS = (
    Target("lossless <= 250 s per 30-step video on one H100", _lossless_time),
    Target("lossless >= 2x diffusers' default transformer, same run", _lossless_speedup),
    Target("fp8 <= 150 s per video", _fp8_time),
    Target("step cache >= 2x at >= 30 dB", _step_cache),
    Target("<= 24 GB GPU memory with block offload", _offload_memory),
    Target("8 GPUs <= 35 s per video", lambda ok: None),
)


def judge(parts: dict[str, PartResult], judged: bool) -> list[dict]:
    """Each target's measured value and verdict (None where not measured, or when `judged` is off: dry run)."""
    ok = {name: part.figures for name, part in parts.items() if part.status == "ok"}
    rows = []
    for target in TARGETS:
        outcome = target.measure(ok)
        rows.append({"goal": target.goal, "measured": outcome[0] if outcome else None,
                     "met": outcome[1] if outcome and judged else None})
    return rows


def markdown(report: dict) -> str:
    parts = {name: PartResult.model_validate(part) for name, part in report["parts"].items()}
    ok = {name: part.figures for name, part in parts.items() if part.status == "ok"}
    environment = report["environment"]
    device = ok.get("environment", {}).get("device") or environment.get("nvidia_smi") or "unknown device"
    lines = [
        f"# GPU measurement of record (`quick`, {report['mode']}): {device}",
        "",
        f"Command: `{report['command']}`; started {report['started_at']}; parts took {report['wall_seconds']:.0f} s "
        f"(budget {report['budget_seconds']:.0f} s).",
        f"nvidia-smi: {environment.get('nvidia_smi') or '-'}; commit {environment.get('git_commit') or '-'}",
        f"Packages: {environment['packages']}",
        f"Torch's view: {ok.get('environment', '-')}",
        "",
        "## DESIGN.md targets",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
        *[f"| {t['goal']} | {t['measured'] or 'not measured'} | {_verdict(t['met'])} |" for t in report["targets"]],
    ]
    dit_rows = [ok[name] for name in DIT_PARTS if name in ok]
    if dit_rows:
        first = dit_rows[0]
        lines += ["", f"## DiT, {report['settings']['height']}x{report['settings']['width']}x"
                      f"{report['settings']['num_frames']}, true CFG batched, extrapolated to "
                      f"{first['video_steps']} steps", "",
                  f"{first['flops_per_forward']:.3e} FLOPs per forward ({first['prompt_tokens']} prompt tokens); bf16 "
                  f"matmul floor {first['matmul_floor_seconds_per_video']:.0f} s per video at 790 TFLOP/s. Each "
                  "variant: one warm-up step, then the timed steps.", "", *variant_table(dit_rows)]
    lines += calibration(ok)
    if "step_cache" in ok:
        cache = ok["step_cache"]
        lines += ["", f"## Step cache, short run: {cache['workload']}", "",
                  *threshold_table([cache["exact"], cache["cached"]])]
    if "end_to_end" in ok:
        e2e = ok["end_to_end"]
        lines += ["", f"## End to end: {e2e['workload']}", "",
                  f"{e2e['seconds']:.2f} s after a warm-up video; peak "
                  f"{'-' if e2e['peak_memory_gb'] is None else format(e2e['peak_memory_gb'], '.1f')} GB; "
                  f"{e2e['mp4_bytes']} mp4 bytes.", "", "| stage | seconds |", "| --- | --- |",
                  *[f"| {stage} | {seconds:.3f} |" for stage, seconds in e2e["stage_seconds"].items()]]
    profile = report["sim_profile"]
    if profile and "error" in profile:
        lines += ["", f"Sim timing profile: not written ({profile['error']})"]
    elif profile:
        lines += ["", f"Sim timing profile: `{profile['file']}`; a {profile['job']['shape']} job of "
                      f"{profile['job']['steps']} steps would take: "
                      + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in profile["job"]["seconds"].items())]
    if "weight_swap" in ok:
        swap = ok["weight_swap"]
        lines += ["", "## Weight swap", "", f"{swap['size']} ({swap['GB per model']} GB a model, {swap['host memory']} "
                  f"host memory): {swap['median s']} s a swap, {swap['GB/s']} GB/s; the whole transformer, "
                  "extrapolated: " + ", ".join(f"{value} s" for key, value in swap.items()
                                                if key.startswith("full model") and value is not None) + "."]
    lines += ["", "## Parts, in the order they ran", "", "| part | status | seconds | expected on one H100 (s) | note |",
              "| --- | --- | --- | --- | --- |"]
    for name, part in parts.items():
        note = (part.reason or "").replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {name} | {part.status} | {part.wall_seconds:.1f} | {report['expected_seconds'][name]:.0f} "
                     f"| {note} |")
    return "\n".join(lines) + "\n"


def calibration(ok: dict[str, dict]) -> list[str]:
    """The preflight's predicted peak (preflight_predictions.json, made on the CPU) next to each DiT part's
    measured one; the goal is within 10%."""
    predictions = json.loads(PREDICTIONS.read_text())
    rows = [(part, predictions[part]["predicted_peak_allocated_gb"], ok[part]["peak_memory_gb"])
            for part in predictions if part in ok and ok[part].get("peak_memory_gb") is not None]
    if not rows:
        return []
    return ["", "## Preflight calibration (torch.cuda.max_memory_allocated, GiB)", "",
            "| part | predicted | measured | error | within 10% |", "| --- | --- | --- | --- | --- |",
            *[f"| {part} | {predicted:.1f} | {measured:.1f} | {(predicted - measured) / measured:+.1%} | "
              f"{_verdict(abs(predicted - measured) <= 0.1 * measured)} |" for part, predicted, measured in rows]]


def _verdict(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "NO")
