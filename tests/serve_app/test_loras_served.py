"""LoRA adapters and both models through the session's Serve app (one gang of 2, the adapter `ink`), back to
back: every job equals its own single-process result, so nothing of one job's weights (adapters, the other
model) leaks into the next."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from serve_app.client import VideoClient
from skyreels import GenerationRequest, LocalPipeline, Task
from skyreels.lora import LoraSpec
from skyreels.models import SERVED_MODEL_IDS
from tests_support import assert_same_video, decode_mp4

pytestmark = pytest.mark.slow

SHAPE = dict(height=64, width=64, num_frames=9, num_inference_steps=3)
SMALL = dict(size="64x64", num_frames=9, num_inference_steps=3)
T2V, I2V = SERVED_MODEL_IDS[Task.T2V], SERVED_MODEL_IDS[Task.I2V]


def local_video(task: Task, prompt: str, seed: int, loras: list[LoraSpec], image: Image.Image | None = None):
    pipe = LocalPipeline.from_pretrained("tiny", task=task)
    return decode_mp4(pipe.generate(GenerationRequest(task=task, prompt=prompt, seed=seed, image=image, loras=loras,
                                                      **SHAPE)).to_mp4())


def test_adapters_and_models_back_to_back_on_one_gang(serve_app, tiny_adapter, first_frame: Image.Image) -> None:
    png = io.BytesIO()
    first_frame.save(png, format="PNG")
    ink = [{"name": "ink", "scale": 4.0}]  # the tiny LoRA is subtle: at full strength it shows through mp4
    with VideoClient(serve_app.url, timeout_s=60) as client:
        assert [(card["id"], card["models"]) for card in client.loras()] == [("ink", [T2V, I2V])]
        jobs = {
            "A: ink 4": client.submit("ink on rice paper", seed=21, loras=ink, **SMALL),
            "B: none": client.submit("ink on rice paper", seed=21, **SMALL),
            "C: ink -4": client.submit("ink on rice paper", seed=21, loras=[{"name": "ink", "scale": -4.0}], **SMALL),
            "D: i2v, ink 4": client.submit("the picture comes alive", image=png.getvalue(), seed=7, loras=ink,
                                             **SMALL),
        }
        finished = {name: client.wait(job["id"], timeout_s=240) for name, job in jobs.items()}
        served = {name: decode_mp4(client.content(job["id"])) for name, job in jobs.items()}
    assert {name: job["status"] for name, job in finished.items()} == dict.fromkeys(jobs, "completed")
    assert finished["A: ink 4"]["loras"] == ink and finished["B: none"]["loras"] == []
    assert "source" not in str(finished["A: ink 4"]["loras"])  # the server's paths stay the server's
    assert finished["A: ink 4"]["metrics"]["weights"] > 0  # the gang's first job with `ink` loaded it

    spec = [LoraSpec(source=str(tiny_adapter), scale=4.0)]
    expected = {
        "A: ink 4": local_video(Task.T2V, "ink on rice paper", 21, spec),
        "B: none": local_video(Task.T2V, "ink on rice paper", 21, []),
        "C: ink -4": local_video(Task.T2V, "ink on rice paper", 21, [LoraSpec(source=str(tiny_adapter), scale=-4.0)]),
        "D: i2v, ink 4": local_video(Task.I2V, "the picture comes alive", 7, spec, first_frame),
    }
    for name in jobs:
        assert_same_video(served[name], expected[name])
    for one, other in (("A: ink 4", "B: none"), ("C: ink -4", "B: none"), ("A: ink 4", "C: ink -4")):
        with pytest.raises(AssertionError):  # each adapter setting shows: a leak would fail the comparisons above
            assert_same_video(expected[one], expected[other])


def test_an_unknown_adapter_is_refused_at_submit_with_the_names_available(serve_app) -> None:
    response = httpx.post(f"{serve_app.url}/v1/videos", json={"prompt": "x", "loras": [{"name": "oil"}], **SMALL})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "loras: no adapter named 'oil'; available (GET /v1/loras): ink")
