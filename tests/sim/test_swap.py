"""A sim gang serving both tasks holds for the profile's weight swap when the task changes, and reports it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from skyreels import Task
from skyreels.gang.commands import Denoise, EncodeImage, EncodeText
from skyreels.gang.rank import GangRank, RankSpec
from skyreels.recipe import Denoised
from skyreels.sim.profile import SimProfile, estimated_weight_swap_seconds, published_a800
from skyreels.stages.denoise import DenoiseParams

FACTOR = 0.001
SOURCE = f"sim?time_factor={FACTOR}"
PARAMS = DenoiseParams(num_frames=9, height=64, width=64, num_inference_steps=2, guidance_scale=6.0,
                       embedded_guidance_scale=1.0, seed=1)


def test_the_gang_reports_a_swap_when_the_task_changes(first_frame) -> None:
    rank = GangRank(RankSpec(transformers={Task.T2V: SOURCE, Task.I2V: SOURCE}, device="cpu", dtype=torch.float32,
                             world_size=1, encode_text=True, decode=True), rank=0)
    (conditioning,) = rank.run(EncodeText(prompt="a fox", negative_prompt="bad"))
    (image,) = rank.run(EncodeImage(first_frame, PARAMS.height, PARAMS.width, PARAMS.seed))
    swaps = []
    for task in (Task.T2V, Task.T2V, Task.I2V, Task.I2V, Task.T2V):
        *steps, denoised = rank.run(Denoise(task, conditioning, PARAMS, image if task is Task.I2V else None))
        assert isinstance(denoised, Denoised) and len(steps) == PARAMS.num_inference_steps
        swaps.append(denoised.weights_s)
    assert swaps[:2] == [0.0, 0.0] and swaps[3] == 0.0
    assert min(swaps[2], swaps[4]) >= published_a800().weight_swap_seconds * FACTOR


def test_the_swap_estimate_and_profiles_written_before_it(tmp_path: Path) -> None:
    assert estimated_weight_swap_seconds() == pytest.approx(2.05, abs=0.01)  # 25.6 GB at 12.5 GB/s
    older = published_a800().model_dump(mode="json")
    del older["weight_swap_seconds"]
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert SimProfile.load(tmp_path / "older.json").weight_swap_seconds == estimated_weight_swap_seconds()
