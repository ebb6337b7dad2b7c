"""The recipe over stand-in stages: order, the CFG rule, progress, timings and cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from skyreels.progress import GenerationCancelled, Phase, Progress, StepProgress
from skyreels.recipe import Decoded, Denoised, generate, run_sync
from skyreels.request import GenerationRequest, Task

SMALL = dict(height=64, width=64, num_frames=9, num_inference_steps=3, seed=1)


class RecordingStages:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.denoise_closed = False
        self.weights_s = 0.0  # what a gang reports for putting the task's weights in place
        self.decodes_in_denoise: str | Exception | None = None  # a gang that decodes in the denoise call: its video

    async def encode_text(self, prompt, negative_prompt):
        self.calls.append(("encode_text", prompt, negative_prompt))
        return "conditioning"

    async def encode_image(self, request):
        self.calls.append(("encode_image", request.seed))
        return "image"

    async def denoise(self, task, conditioning, params, image, checkpoint=None) -> AsyncIterator:
        self.calls.append(("denoise", task, conditioning, params.num_inference_steps, image))
        try:
            for step in range(1, params.num_inference_steps + 1):
                yield StepProgress(step, params.num_inference_steps)
            yield Denoised(torch.zeros(1), weights_s=self.weights_s)
            if isinstance(self.decodes_in_denoise, Exception):
                raise self.decodes_in_denoise
            if self.decodes_in_denoise is not None:
                yield Decoded(self.decodes_in_denoise, seconds=0.5)
        finally:
            self.denoise_closed = True

    async def decode(self, latents, request):
        self.calls.append(("decode", latents.shape))
        return "video"


def test_t2v_order_cfg_progress_and_timings() -> None:
    stages, seen = RecordingStages(), []
    request = GenerationRequest(prompt="a kite", negative_prompt="blur", **SMALL)
    generated = run_sync(generate(request, stages, seen.append))
    assert [call[0] for call in stages.calls] == ["encode_text", "denoise", "decode"]
    assert stages.calls[0] == ("encode_text", "FPS-24, a kite", "blur")  # CFG on: the negative branch is encoded
    assert generated.output == "video" and set(generated.timings) == {"text_encode", "denoise", "decode"}
    assert [p.phase for p in seen] == [Phase.ENCODING_TEXT, Phase.DENOISING, Phase.DENOISING, Phase.DENOISING,
                                       Phase.DENOISING, Phase.DECODING]
    assert [p.percent for p in seen] == sorted(p.percent for p in seen)
    assert seen[-2] == Progress(Phase.DENOISING, 90, 3, 3)


def test_a_weight_swap_is_its_own_timing_taken_out_of_the_denoise(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(range(100))
    monkeypatch.setattr("skyreels.timing.time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    stages = RecordingStages()
    stages.weights_s = 0.25
    generated = run_sync(generate(GenerationRequest(prompt="a kite", **SMALL), stages))
    assert generated.timings == {"text_encode": 1.0, "weights": 0.25, "denoise": 0.75, "decode": 1.0}


class MemoryCheckpoint:
    def __init__(self) -> None:
        self.latents: torch.Tensor | None = None

    def load(self):
        return self.latents

    def save(self, latents):
        self.latents = latents

    def load_steps(self):
        return None

    def save_steps(self, state):
        raise AssertionError("no step is paused here")


def test_a_denoise_stage_that_decodes_too_makes_the_output_without_a_decode_call() -> None:
    stages, seen, checkpoint = RecordingStages(), [], MemoryCheckpoint()
    stages.decodes_in_denoise = "video decoded on the gang"
    generated = run_sync(generate(GenerationRequest(prompt="a kite", **SMALL), stages, seen.append, checkpoint))
    assert generated.output == "video decoded on the gang" and not generated.resumed
    assert [call[0] for call in stages.calls] == ["encode_text", "denoise"]
    assert generated.timings["decode"] == 0.5 and {"denoise", "checkpoint"} <= set(generated.timings)
    assert [p.phase for p in seen][-2:] == [Phase.DENOISING, Phase.DECODING]
    assert checkpoint.latents is not None  # kept as soon as they were in, before the gang decoded


def test_an_in_stage_decode_that_fails_leaves_the_latents_for_a_run_that_starts_at_the_decode() -> None:
    stages, checkpoint = RecordingStages(), MemoryCheckpoint()
    stages.decodes_in_denoise = RuntimeError("the gang's VAE ran out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        run_sync(generate(GenerationRequest(prompt="a kite", **SMALL), stages, checkpoint=checkpoint))
    assert checkpoint.latents is not None
    again = RecordingStages()
    generated = run_sync(generate(GenerationRequest(prompt="a kite", **SMALL), again, checkpoint=checkpoint))
    assert generated.resumed and generated.output == "video"
    assert [call[0] for call in again.calls] == ["decode"]


def test_without_cfg_no_negative_prompt_is_encoded() -> None:
    stages = RecordingStages()
    run_sync(generate(GenerationRequest(prompt="a kite", guidance_scale=1.0, **SMALL), stages))
    assert stages.calls[0] == ("encode_text", "FPS-24, a kite", None)


def test_i2v_encodes_the_image_between_text_and_denoise() -> None:
    stages = RecordingStages()
    request = GenerationRequest(task=Task.I2V, prompt="alive", image=Image.new("RGB", (64, 64)), **SMALL)
    run_sync(generate(request, stages))
    assert [call[0] for call in stages.calls] == ["encode_text", "encode_image", "denoise", "decode"]
    assert stages.calls[2][-1] == "image"


def test_a_raising_progress_callback_closes_the_denoise_stream_and_skips_decode() -> None:
    stages = RecordingStages()

    def cancel_at_step_two(progress: Progress) -> None:
        if progress.step == 2:
            raise GenerationCancelled

    with pytest.raises(GenerationCancelled):
        run_sync(generate(GenerationRequest(prompt="a kite", **SMALL), stages, cancel_at_step_two))
    assert stages.denoise_closed
    assert "decode" not in [call[0] for call in stages.calls]


def test_run_sync_works_inside_a_running_event_loop() -> None:
    import asyncio

    async def caller() -> str:
        stages = RecordingStages()
        return run_sync(generate(GenerationRequest(prompt="a kite", **SMALL), stages)).output

    assert asyncio.run(caller()) == "video"
