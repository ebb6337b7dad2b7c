"""Every validation rule of GenerationRequest refuses a bad value with a message naming the rule."""

from __future__ import annotations

import pytest
from PIL import Image
from pydantic import ValidationError

from skyreels import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, Task

IMAGE = Image.new("RGB", (32, 32))


def refused(match: str, **fields) -> None:
    fields.setdefault("prompt", "a cat")
    with pytest.raises(ValidationError, match=match):
        GenerationRequest(**fields)


def test_defaults_are_skyreels_defaults() -> None:
    request = GenerationRequest(prompt="a cat")
    assert (request.height, request.width, request.num_frames) == (544, 960, 97)
    assert request.num_inference_steps == 30
    assert (request.guidance_scale, request.embedded_guidance_scale) == (6.0, 1.0)
    assert request.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert request.fps == 24 and request.task is Task.T2V


def test_prompt_gets_the_fps_prefix_once() -> None:
    assert GenerationRequest(prompt="a cat").prompt == "FPS-24, a cat"
    assert GenerationRequest(prompt="FPS-24, a cat").prompt == "FPS-24, a cat"


@pytest.mark.parametrize("prompt", ["", "   "])
def test_blank_prompt_refused(prompt: str) -> None:
    refused("prompt", prompt=prompt)


@pytest.mark.parametrize("field", ["height", "width"])
@pytest.mark.parametrize("value", [100, 48, 1296, 0])
def test_size_must_be_multiple_of_16_within_limits(field: str, value: int) -> None:
    refused(f"{field} must be a multiple of 16 between 64 and 1280", **{field: value})


@pytest.mark.parametrize("value", [0, 8, 96, 293])
def test_frames_must_be_4k_plus_1(value: int) -> None:
    refused("num_frames must be 4k\\+1 between 1 and 289", num_frames=value)


def test_valid_shapes_accepted() -> None:
    request = GenerationRequest(prompt="a", height=720, width=720, num_frames=289)
    assert (request.height, request.num_frames) == (720, 289)


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("num_inference_steps", 0, "greater than or equal to 1"),
        ("num_inference_steps", 101, "less than or equal to 100"),
        ("guidance_scale", 0.5, "greater than or equal to 1"),
        ("guidance_scale", 21, "less than or equal to 20"),
        ("embedded_guidance_scale", 0.0, "greater than or equal to 1"),
        ("fps", 0, "greater than or equal to 1"),
        ("fps", 61, "less than or equal to 60"),
    ],
)
def test_ranges(field: str, value: float, rule: str) -> None:
    refused(f"{field}[\\s\\S]*{rule}", **{field: value})


@pytest.mark.parametrize("seed", [-2, 2**32])
def test_seed_range(seed: int) -> None:
    refused("seed must be -1 \\(random\\) or between 0 and 4294967295", seed=seed)


@pytest.mark.parametrize("seed", [None, -1])
def test_random_seed_is_resolved_and_reported(seed: int | None) -> None:
    request = GenerationRequest(prompt="a", seed=seed)
    assert request.seed is None
    resolved = request.with_seed()
    assert 0 <= resolved.seed < 2**32
    assert resolved.with_seed().seed == resolved.seed


def test_i2v_requires_an_image() -> None:
    refused("task i2v requires an image", task="i2v")
    assert GenerationRequest(prompt="a", task="i2v", image=IMAGE).image is IMAGE


def test_t2v_refuses_an_image() -> None:
    refused("task t2v takes no image", image=IMAGE)


def test_unknown_field_and_task_refused() -> None:
    refused("Extra inputs are not permitted", steps=3)
    refused("task", task="v2v")


def test_request_is_frozen() -> None:
    request = GenerationRequest(prompt="a")
    with pytest.raises(ValidationError):
        request.height = 64
