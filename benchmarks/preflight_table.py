"""The preflight's predictions at the workload of record (544x960x97, 30 steps, CFG 6), for the README.

    python benchmarks/preflight_table.py  # writes benchmarks/results/preflight_544x960x97.{md,json}

Each row runs `skyreels preflight`'s own function (skyreels.preflight.generate) on fake CUDA: no GPU needed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from skyreels.optimize.config import OptimizeConfig
from skyreels.preflight.generate import preflight_generate
from skyreels.preflight.gpus import gpu_type
from skyreels.request import GenerationRequest

RESULTS = Path(__file__).parent / "results"
REQUEST = GenerationRequest(prompt="a preflight", height=544, width=960, num_frames=97, num_inference_steps=30)


@dataclass(frozen=True)
class Row:
    gpu: str
    gpu_num: int
    flags: str
    optimize: OptimizeConfig
    sequence_batch: bool = False


ROWS = [
    *(Row("H100-80GB", n, "lossless", OptimizeConfig()) for n in (1, 2, 4, 8)),
    Row("H100-80GB", 1, "--quant --quant_mode fp8", OptimizeConfig(quant="fp8")),
    Row("H100-80GB", 8, "--quant --quant_mode fp8", OptimizeConfig(quant="fp8")),
    Row("H100-80GB", 1, "--offload", OptimizeConfig(offload=True)),
    Row("A100-40GB", 1, "lossless", OptimizeConfig()),
    Row("L4-24GB", 1, "lossless", OptimizeConfig()),
    Row("RTX4090-24GB", 1, "--quant --offload", OptimizeConfig(quant="auto", offload=True)),
    Row("RTX4090-24GB", 1, "--quant --offload --parameters_level",
        OptimizeConfig(quant="auto", offload=True, block_offload=True)),
    Row("L4-24GB", 1, "--quant --offload", OptimizeConfig(quant="auto", offload=True)),
    Row("RTX4090-24GB", 8, "--quant", OptimizeConfig(quant="auto")),
]


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    records = []
    for row in ROWS:
        started = time.perf_counter()
        report = preflight_generate(REQUEST.with_seed(), gpu_type(row.gpu), row.optimize, row.gpu_num,
                                    row.sequence_batch)
        worst = report.worst
        records.append({
            "gpu": row.gpu, "gpu_num": row.gpu_num, "flags": row.flags,
            "peak_allocated_gib": round(worst.allocated_bytes / 2**30, 2),
            "need_gib": round(worst.need_bytes / 2**30, 2),
            "have_gib": round(report.gpu.memory_bytes / 2**30, 2),
            "host_gib": round(report.host_bytes / 2**30, 1),
            "fits": report.fits, "seconds": round(time.perf_counter() - started, 1),
        })
        print(records[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "preflight_544x960x97.json").write_text(json.dumps(records, indent=2) + "\n")
    lines = ["| GPU | GPUs | flags | peak allocated (fullest GPU) | need with overheads | has | host per node | "
             "verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for record in records:
        lines.append(f"| {record['gpu']} | {record['gpu_num']} | {record['flags']} | "
                     f"{record['peak_allocated_gib']:.1f} GiB | {record['need_gib']:.1f} GiB | "
                     f"{record['have_gib']:.1f} GiB | {record['host_gib']:.0f} GiB | "
                     f"{'fits' if record['fits'] else 'does not fit'} |")
    header = ("# skyreels preflight at 544x960x97, 30 steps, T2V (bf16; fake CUDA, no GPU)\n\n"
              "Made by `python benchmarks/preflight_table.py`. \"need\" adds to the allocator's peak the CUDA "
              "context, cuBLAS workspaces, NCCL buffers and a 5% reserve (skyreels/preflight/budget.py): "
              "estimates until a GPU run calibrates them.\n\n")
    (RESULTS / "preflight_544x960x97.md").write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
