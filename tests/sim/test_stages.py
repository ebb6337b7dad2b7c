"""The sim stand-ins: the stages' interfaces, profile timings scaled, a deterministic video, cancel, faults."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from skyreels import GenerationRequest, LocalPipeline, Task
from skyreels.gang.commands import Denoise, EncodeText
from skyreels.gang.rank import GangRank, RankSpec
from skyreels.parallel.mesh import MeshShape
from skyreels.progress import StepProgress
from skyreels.recipe import Denoised
from skyreels.sim.faults import FaultPlan, SimulatedFailure
from skyreels.sim.profile import VideoShape, published_a800
from skyreels.sim.source import SimOptions
from skyreels.stages.denoise import DenoiseParams

FACTOR = 0.0005  # a one-GPU video of the workload (771 s) in 0.39 s
SHAPE = dict(height=544, width=960, num_frames=97, num_inference_steps=30)


@pytest.fixture(scope="module")
def sim_pipeline() -> LocalPipeline:
    return LocalPipeline.from_pretrained(f"sim?time_factor={FACTOR}")


def test_options_ride_in_the_source_string(tmp_path: Path) -> None:
    assert SimOptions.parse("sim") == SimOptions()
    assert SimOptions.parse(f"sim?time_factor=0.5&fail_rate=0.1&profile={tmp_path}/p.json") == SimOptions(
        time_factor=0.5, fail_rate=0.1, profile=tmp_path / "p.json")
    assert SimOptions.parse("tiny") is None and SimOptions.parse("simulated/model") is None
    with pytest.raises(ValidationError):
        SimOptions.parse("sim?time_factr=0.5")


def test_a_video_is_small_deterministic_and_takes_the_profiles_time(sim_pipeline: LocalPipeline) -> None:
    request = GenerationRequest(prompt="a red fox", seed=7, **SHAPE)
    start = time.perf_counter()
    first = sim_pipeline.generate(request)
    elapsed = time.perf_counter() - start
    assert first.frames.shape == (97, 64, 64, 3) and first.frames.dtype == np.uint8
    assert np.array_equal(first.frames, sim_pipeline.generate(request).frames)
    assert not np.array_equal(first.frames, sim_pipeline.generate(request.model_copy(update={"seed": 8})).frames)

    expected = published_a800().job_seconds(VideoShape(height=544, width=960, num_frames=97), 30, i2v=False)
    assert first.timings["denoise"] == pytest.approx(expected["denoise"] * FACTOR, rel=0.3)
    assert first.timings["decode"] >= expected["decode"] * FACTOR
    assert elapsed < 2 * sum(expected.values()) * FACTOR + 1.0
    assert len(first.to_mp4()) > 0


def test_a_profile_file_replaces_the_published_figures(tmp_path: Path) -> None:
    slow = published_a800().model_copy(update={"text_encode_seconds": 400.0})
    slow.save(tmp_path / "slow.json")
    pipe = LocalPipeline.from_pretrained(f"sim?time_factor={FACTOR}&profile={tmp_path / 'slow.json'}")
    result = pipe.generate(GenerationRequest(prompt="a fox", num_inference_steps=1, height=64, width=64,
                                             num_frames=9, seed=1))
    assert result.timings["text_encode"] >= 400.0 * FACTOR  # both prompts new: the job's whole text time


def test_i2v_encodes_the_image_and_denoises_from_it(first_frame: Image.Image) -> None:
    pipe = LocalPipeline.from_pretrained(f"sim?time_factor={FACTOR}", task=Task.I2V)
    request = GenerationRequest(prompt="a fox", task=Task.I2V, image=first_frame, seed=3, height=64, width=64,
                                num_frames=9, num_inference_steps=2)
    result = pipe.generate(request)
    assert result.frames.shape == (9, 64, 64, 3) and "image_encode" in result.timings
    with pytest.raises(ValueError, match="needs"):
        pipe.generate(request.model_copy(update={"image": None}))


@pytest.mark.parametrize("stage", ["text", "denoise", "decode"])
def test_a_prompt_asks_a_stage_to_fail(sim_pipeline: LocalPipeline, stage: str) -> None:
    steps: list[StepProgress] = []
    request = GenerationRequest(prompt=f"a fox #fail-{stage}", seed=1, height=64, width=64, num_frames=9,
                                num_inference_steps=4)
    with pytest.raises(SimulatedFailure, match=stage):
        sim_pipeline.generate(request, on_step=steps.append)
    assert len(steps) == {"text": 0, "denoise": 1, "decode": 4}[stage]  # the denoiser fails half-way


def test_fail_rate_fails_at_random_and_crash_ends_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = LocalPipeline.from_pretrained(f"sim?time_factor={FACTOR}&fail_rate=1")
    with pytest.raises(SimulatedFailure, match="at random"):
        pipe.generate(GenerationRequest(prompt="a fox", seed=1, height=64, width=64, num_frames=9))

    exits: list[int] = []
    monkeypatch.setattr("os._exit", exits.append)
    plan = FaultPlan.from_prompt("#crash-denoise")
    plan.strike("denoise", 0.0, crashes_here=False)
    plan.strike("denoise", 0.0)
    assert exits == [1]
    everything = FaultPlan.from_prompt(" ".join(f"#{action}-{stage}" for action in ("fail", "crash")
                                                for stage in ("text", "denoise", "decode")))
    assert FaultPlan.read(everything.mark(torch.zeros(3, dtype=torch.bfloat16))) == everything


def test_a_gang_rank_stops_between_steps_when_asked() -> None:
    rank = GangRank(RankSpec(transformers={Task.T2V: f"sim?time_factor={FACTOR}"}, device="cpu", dtype=torch.float32,
                             world_size=1, encode_text=True), rank=0)
    conditioning = next(iter(rank.run(EncodeText(prompt="a fox", negative_prompt="bad"))))
    params = DenoiseParams(num_frames=97, height=544, width=960, num_inference_steps=30, guidance_scale=6.0,
                           embedded_guidance_scale=1.0, seed=1)
    events = []
    for event in rank.run(Denoise(Task.T2V, conditioning, params, None)):
        events.append(event)
        if len(events) == 3:
            rank.stop.set()
    assert [e.step for e in events] == [1, 2, 3] and not any(isinstance(e, Denoised) for e in events)


def test_larger_gangs_step_faster_as_the_profile_says() -> None:
    factor = 0.004  # sleeps long enough to time
    options = SimOptions(time_factor=factor)
    pipe = LocalPipeline.from_pretrained(f"sim?time_factor={factor}")
    pipe.denoise.distribute(SimpleNamespace(shape=MeshShape(world_size=8, cfg_degree=2, ulysses_degree=4), rank=0))
    result = pipe.generate(GenerationRequest(prompt="a fox", seed=1, **SHAPE))
    workload = VideoShape(height=544, width=960, num_frames=97)
    eight = options.timings.step_seconds(workload, 2, 4) * 30 * factor
    assert result.timings["denoise"] == pytest.approx(eight, rel=0.25)
    assert eight < options.timings.job_seconds(workload, 30, i2v=False)["denoise"] * factor / 7
