"""Priority classes over real HTTP, on the session's app (tiny, a gang of 2 ranks, preempt_after_s 1): the class in
JSON and multipart bodies and in the job, and a batch job preempted at a step boundary through Serve for an
interactive one, resumed from its step to the video an uninterrupted run makes."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from serve_app.client import VideoAPIError, VideoClient
from skyreels import GenerationRequest, LocalPipeline
from tests_support import assert_same_video, decode_mp4

pytestmark = pytest.mark.slow

SMALL = dict(size="64x64", num_frames=9)
LONG = dict(size="128x128", num_frames=17, num_inference_steps=100)  # seconds on the gang: longer than the wait


@pytest.fixture(scope="module")
def client(serve_base_url: str) -> VideoClient:
    with VideoClient(serve_base_url, timeout_s=60) as client:
        yield client


def test_the_class_rides_in_json_and_multipart_bodies(client: VideoClient, first_frame: Image.Image) -> None:
    import io

    png = io.BytesIO()
    first_frame.save(png, format="PNG")
    jobs = [client.submit("a fast preview", priority="interactive", num_inference_steps=1, **SMALL),
            client.submit("a picture", image=png.getvalue(), priority="interactive", num_inference_steps=1, **SMALL),
            client.submit("a default", num_inference_steps=1, **SMALL)]
    assert [job["priority"] for job in jobs] == ["interactive", "interactive", "batch"]  # batch: the default
    assert all(job["estimated_gpu_s"] > 0 and job["preemptions"] == 0 for job in jobs)
    with pytest.raises(VideoAPIError, match="'interactive' or 'batch'") as refused:
        client.submit("urgent!", priority="urgent", **SMALL)
    assert refused.value.status_code == 422
    for job in jobs:
        client.wait(job["id"], timeout_s=120)


def test_a_batch_job_is_preempted_for_an_interactive_one_and_resumes_to_the_same_video(client: VideoClient) -> None:
    batch = client.submit("a long batch video", seed=3, **LONG)
    deadline = time.monotonic() + 120
    while client.get(batch["id"])["current_step"] < 2:  # it is on the gang
        assert time.monotonic() < deadline
        time.sleep(0.1)
    interactive = client.submit("someone is watching", seed=4, priority="interactive", num_inference_steps=2,
                                **SMALL)
    interactive = client.wait(interactive["id"], timeout_s=120)
    batch = client.wait(batch["id"], timeout_s=240)
    assert interactive["completed_at"] <= batch["completed_at"]
    assert batch["preemptions"] >= 1 and batch["status"] == "completed"
    assert "preempted" in [a["error"]["code"] for a in batch["attempts"] if a["error"]]

    local = LocalPipeline.from_pretrained("tiny").generate(GenerationRequest(
        prompt="a long batch video", seed=3, height=128, width=128, num_frames=17, num_inference_steps=100))
    assert_same_video(decode_mp4(client.content(batch["id"])), decode_mp4(local.to_mp4()))
