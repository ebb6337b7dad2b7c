"""Every parallel layout reproduces the single-process result for the same seed (gloo on CPU).

Shapes: 80x80x9 has 75 video tokens (not divisible by 2 or 4: the padded path), 64x64x5 has
32 (not divisible by 3). The Serve gang of 2 fake GPUs is compared with one process in
tests/serve_app/test_jobs_api.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gloo_ranks import run_ranks
from skyreels import GenerationRequest, LocalPipeline, Task
from skyreels.stages.vae import VaeStage

pytestmark = pytest.mark.slow

LATENT_TOLERANCE = 1e-4
LAYOUTS = [  # (gpu_num, sequence_batch, (height, width, frames))
    (2, False, (80, 80, 9)),  # CFG 2
    (2, True, (80, 80, 9)),  # Ulysses 2, padded
    (4, False, (80, 80, 9)),  # CFG 2 x Ulysses 2, padded
    (3, False, (64, 64, 5)),  # Ulysses 3, padded
]


def make_request(task: Task, shape: tuple[int, int, int], image: Image.Image) -> GenerationRequest:
    height, width, frames = shape
    return GenerationRequest(task=task, prompt="a boat on a lake", height=height, width=width, num_frames=frames,
                             num_inference_steps=3, seed=11, image=image if task is Task.I2V else None)


@pytest.mark.parametrize("task", [Task.T2V, Task.I2V])
@pytest.mark.parametrize(("gpu_num", "sequence_batch", "shape"), LAYOUTS,
                         ids=[f"n{n}{'-seqbatch' if s else ''}-{h}x{w}x{f}" for n, s, (h, w, f) in LAYOUTS])
def test_parallel_equals_one_process(
    task: Task, gpu_num: int, sequence_batch: bool, shape: tuple, tiny_t2v_dir: Path, tiny_i2v_dir: Path,
    first_frame: Image.Image,
) -> None:
    model = tiny_i2v_dir if task is Task.I2V else tiny_t2v_dir
    request = make_request(task, shape, first_frame)
    single = LocalPipeline.from_pretrained(model, task=task).generate(request)
    gang = LocalPipeline.from_pretrained(model, task=task, gpu_num=gpu_num, sequence_batch=sequence_batch)
    try:
        parallel = gang.generate(request)
    finally:
        gang.close()
    assert parallel.seed == single.seed
    assert torch.allclose(parallel.latents, single.latents, rtol=0, atol=LATENT_TOLERANCE)
    assert np.abs(parallel.frames.astype(int) - single.frames.astype(int)).max() <= 1


def _decode_tiles(rank: int, vae_dir: str, latents: torch.Tensor) -> np.ndarray | None:
    stage = VaeStage.from_pretrained(vae_dir)
    small_tiles(stage)
    return stage.decode_parallel(latents)


def small_tiles(stage: VaeStage) -> None:
    """Tiles of 32 px (stride 24) and 2 latent frames: a small video becomes many decoder calls."""
    stage.vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                            tile_sample_stride_width=24, tile_sample_min_num_frames=8,
                            tile_sample_stride_num_frames=4)


@pytest.mark.parametrize("world_size", [2, 3])
def test_parallel_vae_equals_single_vae(world_size: int, tiny_t2v_dir: Path) -> None:
    latents = torch.randn(1, 4, 4, 10, 12, generator=torch.Generator().manual_seed(3))
    single = VaeStage.from_pretrained(tiny_t2v_dir / "vae")
    small_tiles(single)
    expected = single.decode(latents)
    frames = run_ranks(world_size, _decode_tiles, str(tiny_t2v_dir / "vae"), latents)
    assert frames[0].shape == expected.shape == (13, 80, 96, 3)
    assert np.array_equal(frames[0], expected)
    assert all(f is None for f in frames[1:])
