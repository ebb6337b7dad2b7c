"""Markdown tables of benchmark rows, shared by the scripts and the GPU report (no torch here)."""

from __future__ import annotations


def variant_table(rows: list[dict]) -> list[str]:
    """Markdown rows of measured variants (a row with "error" is shown as failed), speed-up against diffusers'."""
    baseline = next((r for r in rows if r["variant"] == "diffusers" and "error" not in r), None)
    lines = ["| variant | s/step | s/video | vs diffusers | peak GB | TFLOP/s | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | failed: {row['error'][:120]} | | | | | |")
            continue
        speedup = f"{baseline['seconds_per_step'] / row['seconds_per_step']:.2f}x" if baseline else "-"
        peak = f"{row['peak_memory_gb']:.1f}" if row["peak_memory_gb"] is not None else "-"
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        lines.append(f"| {row['variant']} | {row['seconds_per_step']:.4f} | {row['seconds_per_video']:.2f} | "
                     f"{speedup} | {peak} | {row['achieved_tflops']:.3g} | {mfu} |")
    return lines


def threshold_table(rows: list[dict]) -> list[str]:
    """Markdown rows of step cache thresholds against the exact video."""
    return ["| threshold | s/video | speed-up | skipped forwards | latent PSNR (dB) | max abs diff latents | "
            "frame PSNR (dB) |", "| --- | --- | --- | --- | --- | --- | --- |",
            *[f"| {r['threshold']} | {r['seconds_per_video']:.2f} | {r['speedup']:.2f}x | "
              f"{r['skipped_forwards']}/{r['forwards']} | {r['latent_psnr_db']:.1f} | {r['max_abs_diff_latents']:.2e} | "
              f"{'-' if r['frame_psnr_db'] is None else format(r['frame_psnr_db'], '.1f')} |" for r in rows]]


def markdown_table(rows: list[dict]) -> str:
    """Rows of the same keys as a markdown table, the keys as its header; None shows as '-'."""
    if not rows:
        return "(none)"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join("-" if row[key] is None else str(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines)
