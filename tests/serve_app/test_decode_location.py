"""Where the decode runs is configuration: the gang's parallel VAE or the Vae stage give the same video."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from serve_app.client import VideoClient
from skyreels import GenerationRequest, LocalPipeline, Task
from tests_support import assert_same_video, decode_mp4

pytestmark = pytest.mark.slow

SMALL = dict(size="64x64", num_frames=9, num_inference_steps=4)


@pytest.fixture(scope="module")
def gang_decoding_app(ray_local, tmp_path_factory):
    from ray import serve

    from conftest import deploy

    app = deploy(ray_local, tmp_path_factory.mktemp("gang-decode"), "gang-decode", "/gang-decode",
                 gpus_per_replica=2, decode_on="gang")
    yield app
    serve.delete(app.name)


def test_decode_on_the_gang_equals_the_vae_stage_and_local_pipeline(gang_decoding_app, serve_app) -> None:
    with VideoClient(gang_decoding_app.url, timeout_s=60) as on_gang, VideoClient(serve_app.url, timeout_s=60) as on_vae:
        jobs = {name: client.submit("a red kite over the dunes", seed=11, **SMALL)
                for name, client in (("gang", on_gang), ("vae", on_vae))}
        finished = {"gang": on_gang.wait(jobs["gang"]["id"], timeout_s=180),
                    "vae": on_vae.wait(jobs["vae"]["id"], timeout_s=180)}
        videos = {"gang": decode_mp4(on_gang.content(jobs["gang"]["id"])),
                  "vae": decode_mp4(on_vae.content(jobs["vae"]["id"]))}
    assert {job["status"] for job in finished.values()} == {"completed"}
    local = LocalPipeline.from_pretrained("tiny", task="t2v").generate(
        GenerationRequest(prompt="a red kite over the dunes", seed=11, height=64, width=64, num_frames=9,
                          num_inference_steps=4))
    assert videos["gang"].shape == (9, 64, 64, 3)
    assert_same_video(videos["gang"], videos["vae"])
    assert_same_video(videos["gang"], decode_mp4(local.to_mp4()))


def test_i2v_decoded_on_the_gang_equals_local_pipeline(gang_decoding_app, first_frame: Image.Image) -> None:
    png = io.BytesIO()
    first_frame.save(png, format="PNG")
    with VideoClient(gang_decoding_app.url, timeout_s=60) as client:
        job = client.submit("the picture comes alive", image=png.getvalue(), seed=7, **SMALL)
        client.wait(job["id"], timeout_s=180)
        served = decode_mp4(client.content(job["id"]))
    local = LocalPipeline.from_pretrained("tiny", task=Task.I2V).generate(
        GenerationRequest(task=Task.I2V, prompt="the picture comes alive", image=first_frame, seed=7, height=64,
                          width=64, num_frames=9, num_inference_steps=4))
    assert_same_video(served, decode_mp4(local.to_mp4()))
