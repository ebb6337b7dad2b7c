from __future__ import annotations

import pytest
import torch

from skyreels import GenerationCancelled, GenerationRequest, LocalPipeline, StepProgress
from skyreels.stages.denoise import DenoiseParams


def test_progress_reports_every_step(t2v_pipeline: LocalPipeline, t2v_request: GenerationRequest) -> None:
    seen: list[StepProgress] = []
    t2v_pipeline.generate(t2v_request, on_step=seen.append)
    assert seen == [StepProgress(step=i, total=4) for i in range(1, 5)]


def test_callback_cancels_between_steps(t2v_pipeline: LocalPipeline, t2v_request: GenerationRequest) -> None:
    seen: list[int] = []

    def cancel_after_two(progress: StepProgress) -> None:
        seen.append(progress.step)
        if progress.step == 2:
            raise GenerationCancelled

    with pytest.raises(GenerationCancelled):
        t2v_pipeline.generate(t2v_request, on_step=cancel_after_two)
    assert seen == [1, 2]


def test_noise_is_drawn_on_cpu_like_diffusers(t2v_pipeline: LocalPipeline, t2v_request: GenerationRequest) -> None:
    params = DenoiseParams.from_request(t2v_request)
    noise = t2v_pipeline.denoise.initial_noise(params)
    expected = torch.randn((1, 4, 3, 8, 8), generator=torch.Generator("cpu").manual_seed(42))
    assert torch.equal(noise, expected)


def test_i2v_model_refuses_missing_image(i2v_pipeline: LocalPipeline, t2v_request: GenerationRequest) -> None:
    conditioning = i2v_pipeline.text.encode("a", "b")
    with pytest.raises(ValueError, match="I2V model and needs an image"):
        i2v_pipeline.denoise.denoise(conditioning, DenoiseParams.from_request(t2v_request))


def test_cfg_needs_negative(t2v_pipeline: LocalPipeline, t2v_request: GenerationRequest) -> None:
    with pytest.raises(ValueError, match="needs a negative prompt"):
        t2v_pipeline.denoise.denoise(t2v_pipeline.text.encode("a"), DenoiseParams.from_request(t2v_request))


def test_without_cfg_runs_one_branch(t2v_pipeline: LocalPipeline, t2v_request: GenerationRequest) -> None:
    batches: list[int] = []
    hook = t2v_pipeline.denoise.transformer.register_forward_pre_hook(
        lambda _, args, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        t2v_pipeline.generate(t2v_request.model_copy(update={"guidance_scale": 1.0}))
        assert batches == [1] * 4  # one forward per step, the positive branch alone
        batches.clear()
        t2v_pipeline.generate(t2v_request)
        assert batches == [2] * 4  # CFG: both branches batched
    finally:
        hook.remove()
