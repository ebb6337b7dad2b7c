"""Equivalence table of every parallel layout against one process (tiny preset, gloo on CPU).

    python benchmarks/parallel_equivalence.py --out benchmarks/results/parallel_equivalence.md

For each layout: mesh degrees, shape, video token count, max |latents - single| and max frame diff.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skyreels import GenerationRequest, LocalPipeline, Task, make_tiny_model
from skyreels.parallel.mesh import MeshShape

LAYOUTS = [  # (gpu_num, sequence_batch)
    (2, False), (2, True), (3, False), (4, False), (4, True), (6, False), (8, False),
]
SHAPES = [(80, 80, 9), (64, 64, 5)]  # 75 and 32 video tokens: both need padding on some degree
PATCH = 2


def video_tokens(height: int, width: int, frames: int) -> int:
    return ((frames - 1) // 4 + 1) * (height // 8 // PATCH) * (width // 8 // PATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/parallel_equivalence.md"))
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="parallel-eq-"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8))
    rows = []
    for task in (Task.T2V, Task.I2V):
        model = make_tiny_model(root / task.value, task=task)
        heads = LocalPipeline.from_pretrained(model, task=task).denoise.transformer.config.num_attention_heads
        single_pipe = LocalPipeline.from_pretrained(model, task=task)
        for height, width, frames in SHAPES:
            request = GenerationRequest(task=task, prompt="a boat on a lake", height=height, width=width,
                                        num_frames=frames, num_inference_steps=args.steps, seed=11,
                                        image=image if task is Task.I2V else None)
            single = single_pipe.generate(request)
            for gpu_num, sequence_batch in LAYOUTS:
                mesh = MeshShape.plan(gpu_num, heads, sequence_batch=sequence_batch)
                gang = LocalPipeline.from_pretrained(model, task=task, gpu_num=gpu_num, sequence_batch=sequence_batch)
                try:
                    result = gang.generate(request)
                finally:
                    gang.close()
                tokens = video_tokens(height, width, frames)
                rows.append((task.value, gpu_num, mesh.cfg_degree, mesh.ulysses_degree, sequence_batch,
                             f"{width}x{height}x{frames}", tokens, tokens % mesh.ulysses_degree != 0,
                             (result.latents - single.latents).abs().max().item(),
                             int(np.abs(result.frames.astype(int) - single.frames.astype(int)).max())))
                print(*rows[-1], flush=True)
    lines = [
        "# Parallel DiT equivalence (N ranks vs one process, same seed)",
        "",
        f"Tiny preset (12 heads), float32, gloo on CPU ({platform.machine()}, torch {torch.__version__}), "
        f"{args.steps} steps, CFG 6. Command: `python {' '.join(sys.argv)}`",
        "",
        "| task | N | cfg | ulysses | sequence_batch | shape (WxHxF) | video tokens | padded | max abs diff latents | max frame diff (/255) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {t} | {n} | {c} | {u} | {sb} | {shape} | {tok} | {'yes' if pad else 'no'} | {diff:.2e} | {fd} |"
          for t, n, c, u, sb, shape, tok, pad, diff, fd in rows],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
