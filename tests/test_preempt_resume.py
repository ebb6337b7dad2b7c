"""A run paused between two denoising steps (a preempted job) and resumed from its checkpoint makes the video the
uninterrupted run makes: bit for bit without the step cache, in one process and on a local gang of 2; with the
step cache, within the cache's own distance from the uncached video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skyreels import GenerationRequest, LocalPipeline
from skyreels.artifacts import ArtifactStore, LatentCheckpoint
from skyreels.optimize import OptimizeConfig
from skyreels.pipeline import VideoGenerator
from skyreels.progress import Phase, Progress
from skyreels.recipe import Generated, generate, run_sync

REQUEST = GenerationRequest(prompt="a boat on a lake", height=64, width=64, num_frames=9, num_inference_steps=6,
                            seed=11)


class Paused(Exception):
    """Stands for the runner's stop: raised from the progress report, it closes the denoise stream."""


def pause_after(step: int):
    def report(progress: Progress) -> None:
        if progress.phase is Phase.DENOISING and progress.step == step:
            raise Paused

    return report


def paused_and_resumed(pipe: VideoGenerator, tmp_path: Path, pauses: tuple[int, ...]) -> tuple[Generated, list[int]]:
    """The request paused after each of `pauses` steps (counted from the step it resumed at), then run to its end;
    and the steps the checkpoint held after each pause."""
    checkpoint = LatentCheckpoint(ArtifactStore(str(tmp_path / "artifacts")), "video_paused")
    held = []
    for step in pauses:
        with pytest.raises(Paused):
            run_sync(generate(REQUEST, pipe.stages(), pause_after(step), checkpoint))
        held.append(checkpoint.load_steps().step)
    return run_sync(generate(REQUEST, pipe.stages(), None, checkpoint)), held


def test_one_process_resumes_bit_exact(tiny_t2v_dir: Path, tmp_path: Path) -> None:
    pipe = LocalPipeline.from_pretrained(tiny_t2v_dir)
    whole = run_sync(generate(REQUEST, pipe.stages()))
    resumed, held = paused_and_resumed(pipe, tmp_path, pauses=(2, 4))  # paused twice: after steps 2 and 4
    assert held == [2, 4]
    assert torch.equal(resumed.latents, whole.latents)
    assert np.array_equal(resumed.output, whole.output)


def test_with_the_step_cache_a_resumed_run_stays_within_the_caches_tolerance(tiny_t2v_dir: Path,
                                                                            tmp_path: Path) -> None:
    exact = run_sync(generate(REQUEST, LocalPipeline.from_pretrained(tiny_t2v_dir).stages()))
    cached = LocalPipeline.from_pretrained(tiny_t2v_dir, optimize=OptimizeConfig(step_cache_threshold=0.9))
    whole = run_sync(generate(REQUEST, cached.stages()))
    resumed, held = paused_and_resumed(cached, tmp_path, pauses=(3,))
    assert held == [3]
    tolerance = (whole.latents - exact.latents).abs().max().item()  # what the cache itself changes
    assert tolerance > 0  # it skipped steps
    assert (resumed.latents - exact.latents).abs().max().item() <= tolerance * 1.5


@pytest.mark.slow
def test_a_gang_of_2_resumes_bit_exact(tiny_t2v_dir: Path, tmp_path: Path) -> None:
    single = run_sync(generate(REQUEST, LocalPipeline.from_pretrained(tiny_t2v_dir).stages()))
    gang = LocalPipeline.from_pretrained(tiny_t2v_dir, gpu_num=2)
    try:
        whole = run_sync(generate(REQUEST, gang.stages()))
        # the ranks stop together after the step in flight when the pause is asked: at step 2 or later
        resumed, held = paused_and_resumed(gang, tmp_path, pauses=(2,))
    finally:
        gang.close()
    assert 2 <= held[0] < REQUEST.num_inference_steps
    assert torch.equal(resumed.latents, whole.latents)
    assert np.array_equal(resumed.output, whole.output)
    assert torch.allclose(whole.latents, single.latents, rtol=0, atol=1e-4)  # the gang is the one-process run
