"""quick's report puts the preflight's prediction next to each measured DiT peak (the calibration a GPU run does)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
sys.path[:0] = [str(BENCHMARKS / "gpu"), str(BENCHMARKS)]

import quick_report  # noqa: E402


def test_every_dit_part_of_ours_has_a_prediction_and_is_judged_against_its_measurement() -> None:
    predictions = json.loads(quick_report.PREDICTIONS.read_text())
    assert set(predictions) == {part for part, variant in quick_report.DIT_PARTS.items() if variant != "diffusers"}
    lossless = predictions["dit_lossless"]["predicted_peak_allocated_gb"]
    measured = {"dit_lossless": {"peak_memory_gb": lossless * 1.05},  # within 10%
                "memory_offload": {"peak_memory_gb": predictions["memory_offload"]["predicted_peak_allocated_gb"] * 2}}
    rows = [line for line in quick_report.calibration(measured) if line.startswith("| dit_") or
            line.startswith("| memory_")]
    assert rows[0].startswith("| dit_lossless |") and rows[0].endswith("| yes |")
    assert rows[1].startswith("| memory_offload |") and rows[1].endswith("| NO |") and "-50.0%" in rows[1]
