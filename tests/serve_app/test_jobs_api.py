"""The jobs API end to end over real HTTP, against the staged app on local Ray."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from serve_app.client import JobFailed, VideoAPIError, VideoClient
from skyreels import GenerationRequest, LocalPipeline, Task
from tests_support import assert_same_video, decode_mp4

pytestmark = pytest.mark.slow

SMALL = dict(size="64x64", num_frames=9, num_inference_steps=4)


@pytest.fixture(scope="module")
def client(serve_base_url: str) -> VideoClient:
    with VideoClient(serve_base_url, timeout_s=60) as client:
        yield client


def test_t2v_job_follows_sse_and_equals_local_pipeline(client: VideoClient) -> None:
    job = client.submit("a cat walks on the grass", seed=42, **SMALL)
    assert job["status"] == "queued" and job["seed"] == 42 and job["prompt"] == "a cat walks on the grass"
    updates = list(client.events(job["id"], timeout_s=120))
    final = updates[-1]
    assert final["status"] == "completed" and final["progress"] == 100 and final["phase"] == "done"
    progress = [u["progress"] for u in updates]
    assert progress == sorted(progress)
    assert {u["current_step"] for u in updates if u["phase"] == "denoising"} >= {1, 2, 3, 4}
    timed = [u for u in updates if u["phase"] == "denoising" and u["current_step"] >= 1]
    assert timed and all(isinstance(u["eta_seconds"], int) and u["eta_seconds"] >= 0 for u in timed)
    assert final["eta_seconds"] is None
    assert set(final["metrics"]) >= {"text_encode", "denoise", "decode"}

    served = decode_mp4(client.content(job["id"]))
    local = LocalPipeline.from_pretrained("tiny", task="t2v").generate(
        GenerationRequest(prompt="a cat walks on the grass", seed=42, height=64, width=64, num_frames=9,
                          num_inference_steps=4))
    assert served.shape == (9, 64, 64, 3)
    assert_same_video(served, decode_mp4(local.to_mp4()))


def test_i2v_multipart_job_equals_local_pipeline(client: VideoClient, first_frame: Image.Image) -> None:
    png = io.BytesIO()
    first_frame.save(png, format="PNG")
    job = client.submit("the picture comes alive", image=png.getvalue(), seed=7, **SMALL)
    assert job["model"] == "skyreels-v1-i2v" and job["has_input_reference"]
    client.wait(job["id"], timeout_s=120)

    local = LocalPipeline.from_pretrained("tiny", task=Task.I2V).generate(
        GenerationRequest(task=Task.I2V, prompt="the picture comes alive", image=first_frame, seed=7, height=64,
                          width=64, num_frames=9, num_inference_steps=4))
    assert_same_video(decode_mp4(client.content(job["id"])), decode_mp4(local.to_mp4()))
    thumbnail = Image.open(io.BytesIO(client.content(job["id"], variant="thumbnail")))
    assert thumbnail.format == "JPEG" and thumbnail.size == (64, 64)


def test_i2v_data_url_in_json(client: VideoClient, first_frame: Image.Image) -> None:
    import base64

    png = io.BytesIO()
    first_frame.save(png, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    job = client.submit("moving", model="skyreels-v1-i2v", input_reference=data_url, **SMALL)
    assert client.wait(job["id"], timeout_s=120)["status"] == "completed"


def test_left_out_fields_get_the_models_defaults_and_seconds_map_to_frames(client: VideoClient) -> None:
    job = client.submit("defaults", seed=1)
    assert (job["size"], job["num_frames"], job["num_inference_steps"]) == ("64x64", 9, 4)
    assert isinstance(job["created_at"], int) and job["seconds"] == "0.375"
    timed = client.submit("two seconds at 4 fps", seconds="2", fps=4, num_inference_steps=1)
    assert timed["num_frames"] == 9 and timed["seconds"] == "2.25"
    for job_id in (job["id"], timed["id"]):
        client.delete(job_id)
    with pytest.raises(VideoAPIError, match=r"seconds: at most 12 s at 24 fps \(289 frames\)") as too_long:
        client.submit("long", seconds="13")
    assert too_long.value.status_code == 422


def test_random_seed_is_reported(client: VideoClient) -> None:
    job = client.submit("a dog", seed=-1, **SMALL)
    assert 0 <= job["seed"] < 2**32
    assert client.wait(job["id"], timeout_s=120)["seed"] == job["seed"]


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        (dict(size="65x64"), 422, "size: width must be a multiple of 16 between 64 and 1280, got 65"),
        (dict(size="64by64"), 422, "size: String should match pattern"),
        (dict(num_frames=10), 422, "num_frames must be 4k+1 between 1 and 289"),
        (dict(num_inference_steps=0), 422, "num_inference_steps: Input should be greater than or equal to 1"),
        (dict(guidance_scale=50), 422, "guidance_scale: Input should be less than or equal to 20"),
        (dict(embedded_guidance_scale=0.5), 422, "embedded_guidance_scale: Input should be greater than or equal"),
        (dict(fps=0), 422, "fps: Input should be greater than or equal to 1"),
        (dict(seed=2**33), 422, "seed must be -1 (random) or between 0 and 4294967295"),
        (dict(prompt="   "), 422, "prompt: prompt must not be blank"),
        (dict(model="skyreels-v1-i2v"), 422, "task i2v requires an image (the first frame to animate)"),
        (dict(model="sora"), 400, "unknown model 'sora'; available models: skyreels-v1-t2v, skyreels-v1-i2v"),
        (dict(steps=4), 422, "unrecognized field steps; the fields are: model, size, seconds, "),
        (dict(seconds="1"), 422, "give seconds or num_frames, not both"),
        (dict(input_reference="data:text/plain;base64,aGk="), 422, "input_reference must be a data URL"),
        (dict(model="skyreels-v1-i2v", input_reference="data:image/png;base64,aGk="), 422,
         "input_reference is not a readable image"),
    ],
)
def test_bad_input_is_refused_with_the_rule(client: VideoClient, fields: dict, status: int, message: str) -> None:
    body = {"prompt": "a cat", **SMALL, **fields}
    with pytest.raises(VideoAPIError) as refused:
        client.submit(**body)
    assert refused.value.status_code == status
    assert message in str(refused.value)


def test_t2v_refuses_an_image(client: VideoClient) -> None:
    with pytest.raises(VideoAPIError, match="task t2v takes no image") as refused:
        client.submit("a cat", image=_png_bytes(), model="skyreels-v1-t2v", **SMALL)
    assert refused.value.status_code == 422


@pytest.mark.parametrize(("body", "content_type", "status", "message"), [
    (b"{nope", "application/json", 400, "not valid JSON"),
    (b"\xff\xfe", "application/json", 400, "not valid JSON"),
    (b"[1, 2]", "application/json", 422, "the body must be a JSON object"),
    (b"prompt", "text/plain", 415, "send application/json or multipart/form-data"),
])
def test_malformed_bodies_get_4xx(serve_base_url: str, body: bytes, content_type: str, status: int,
                                  message: str) -> None:
    import httpx

    response = httpx.post(f"{serve_base_url}/v1/videos", content=body, headers={"content-type": content_type})
    assert response.status_code == status and message in response.json()["error"]["message"]


def test_unknown_job_is_404(client: VideoClient) -> None:
    for call in (client.get, client.cancel, client.delete, client.content):
        with pytest.raises(VideoAPIError) as missing:
            call("video_nope")
        assert missing.value.status_code == 404 and missing.value.code == "not_found"


def test_models_health_metrics(client: VideoClient, serve_base_url: str) -> None:
    import httpx

    assert client.models() == ["skyreels-v1-t2v", "skyreels-v1-i2v"]
    card = httpx.get(f"{serve_base_url}/v1/models").json()["data"][0]
    assert card["defaults"] | {"seconds": None} == dict(size="64x64", num_frames=9, num_inference_steps=4,
                                                       guidance_scale=6.0, fps=24, seconds=None)
    assert card["limits"]["max_frames"] == 289
    assert httpx.get(f"{serve_base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{serve_base_url}/readyz").status_code == 200
    assert httpx.get(f"{serve_base_url}/metrics").status_code == 404  # Prometheus scrapes Ray's export instead


def test_list_paginates_newest_first_and_delete(client: VideoClient) -> None:
    ids = [client.submit(f"clip {i}", **SMALL)["id"] for i in range(3)]
    for job_id in ids:
        client.wait(job_id, timeout_s=120)
    first = client.list(limit=2)
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"]
    assert first["first_id"] == ids[2] and first["last_id"] == ids[1]
    second = client.list(limit=2, after=first["last_id"])
    assert second["data"][0]["id"] == ids[0]

    assert client.delete(ids[0])["deleted"] is True
    with pytest.raises(VideoAPIError) as gone:
        client.content(ids[0])
    assert gone.value.status_code == 404


def test_content_before_completion_is_409(client: VideoClient) -> None:
    job = client.submit("a slow one", size="64x64", num_frames=9, num_inference_steps=60)
    with pytest.raises(VideoAPIError) as early:
        client.content(job["id"])
    assert early.value.status_code == 409 and early.value.code == "not_ready"
    client.cancel(job["id"])
    with pytest.raises(JobFailed):
        client.wait(job["id"], timeout_s=120)


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()
