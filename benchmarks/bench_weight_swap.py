"""Weight swap: how long a gang rank takes to put the other served model's transformer weights in place
(skyreels.weights.TransformerBank.activate), per model size, and per GB extrapolated to the full transformer.

    python benchmarks/bench_weight_swap.py --sizes tiny,blocks-1-2,blocks-2-4 --out benchmarks/results/weight_swap_cpu.json
    python benchmarks/bench_weight_swap.py --sizes blocks-2-4,full --out benchmarks/results/weight_swap_h100.json

Sizes: `tiny` (the tiny preset), `blocks-D-S` (the real 13B model's width with D double and S single blocks, random
weights: a slice that fits in host memory), `full` (random-full: all 20 + 40 blocks, 25.6 GB in bf16; a GPU host).
Each size swaps T2V -> I2V -> T2V `--repeats` times; on cuda once from pinned and once from pageable host memory.
On the CPU the "device" is host memory too: the copy is host -> host, bounded by memory bandwidth, not PCIe.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import HunyuanVideoTransformer3DModel
from torch import nn

from skyreels import make_tiny_model, random_full
from skyreels.loader import stage_loader
from skyreels.request import Task
from skyreels.weights import TransformerBank
from tables import markdown_table
from workload import versions

NOTES = [
    "`GB per model` is what one swap copies (every parameter and buffer of the transformer, bf16). `blocks-D-S` "
    "rows are slices of the real model (its width, D of 20 double and S of 40 single blocks) that fit in host "
    "memory; the last column extrapolates their seconds per GB to the whole transformer, labelled as such.",
    "On the CPU the \"device\" is host memory: a swap is a host -> host copy bounded by memory bandwidth (and by "
    "whatever else the machine runs: see the load average), not the PCIe copy of a GPU rank.",
    "On a GPU rank the copy is pinned host -> device over PCIe: ~25 GB/s on Gen4 x16 (A100/A800 hosts), ~50 GB/s on "
    "Gen5 (H100/H200), i.e. ~1 s / ~0.5 s for 25.6 GB on a GPU alone on its link; the sim profile assumes 2 s "
    "(two GPUs of a gang sharing each x16 uplink, skyreels.sim.profile.estimated_weight_swap_seconds) until "
    "`--device cuda` measures it.",
]

ModelMaker = Callable[[Task, str], nn.Module]  # (task, device) -> a transformer with the task's weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,blocks-1-2", help="comma-separated: tiny, blocks-D-S, full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="T2V -> I2V -> T2V rounds per size")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/weight_swap.json"))
    args = parser.parse_args()
    dtype = torch.bfloat16
    pins = (True, False) if args.device == "cuda" else (False,)
    full_gb = parameter_count(random_full.transformer_config(Task.I2V)) * dtype.itemsize / 1e9
    with tempfile.TemporaryDirectory() as scratch:
        rows = [measure(size, maker(size, Path(scratch), dtype), args.device, pin, args.repeats, full_gb)
                for size in args.sizes.split(",") for pin in pins]
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (host -> host copies)"
    report = {"command": f"python {' '.join(sys.argv)}", "device": device, "versions": versions(), "dtype": str(dtype),
              "full_transformer_gb": round(full_gb, 2), "load_average_1_5_15_min": os.getloadavg(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Weight swap (T2V <-> I2V transformer, in place)", "", f"Device: {device}; {report['versions']}",
             f"Command: `{report['command']}`",
             f"Load average at the end (1/5/15 min, {os.cpu_count()} CPUs): {report['load_average_1_5_15_min']}", "",
             markdown_table(rows), "", *[f"- {note}" for note in NOTES]]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def maker(size: str, scratch: Path, dtype: torch.dtype) -> ModelMaker:
    if size == "tiny":
        dirs = {task: make_tiny_model(scratch / task.value, task) for task in Task}
        return lambda task, device: stage_loader(str(dirs[task]), task, dtype=dtype).host_transformer().to(device)
    if size == "full":
        return lambda task, device: random_full.random_transformer(task, device, dtype)
    _, double, single = size.split("-")
    return lambda task, device: random_full.random_transformer(task, device, dtype, num_layers=int(double),
                                                               num_single_layers=int(single))


def measure(size: str, make: ModelMaker, device: str, pin: bool, repeats: int, full_gb: float) -> dict:
    """Median seconds of one swap; the host copies made on the device, then moved (random weights made on a GPU
    are faster than on the CPU)."""
    bank = TransformerBank.load(make(Task.T2V, device), Task.T2V, {Task.I2V: make(Task.I2V, device).to("cpu")},
                                pin=pin)
    seconds = [bank.activate(task) for _ in range(repeats) for task in (Task.I2V, Task.T2V)]
    gigabytes = bank.host[Task.I2V].nbytes / 1e9
    median = statistics.median(seconds)
    del bank
    gc.collect()
    return {"size": size, "host memory": "pinned" if pin else "pageable", "GB per model": round(gigabytes, 3),
            "swaps": len(seconds), "median s": round(median, 4), "min s": round(min(seconds), 4),
            "GB/s": round(gigabytes / median, 2), "s per GB": round(median / gigabytes, 4),
            # the tiny model's swap is per-tensor overhead, not bytes: it says nothing of 25.6 GB
            f"full model ({full_gb:.1f} GB) s, extrapolated": None if size == "tiny" else
            round(median / gigabytes * full_gb, 2)}


def parameter_count(config: dict) -> int:
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in HunyuanVideoTransformer3DModel(**config).parameters())


if __name__ == "__main__":
    main()
