"""The official `openai` package, unchanged, as the client of the running app (`base_url=<app>/v1`)."""

from __future__ import annotations

import io
import warnings

import pytest
from PIL import Image

from tests_support import assert_same_video, decode_mp4

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

# 9 frames of 64x64 in 2 steps: seconds="2" at fps=4 is 8 frames, rounded to 4k+1 = 9
CHEAP = {"fps": 4, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def client(serve_base_url: str):
    warnings.simplefilter("ignore", DeprecationWarning)  # the package marks the videos API deprecated
    with openai.OpenAI(base_url=f"{serve_base_url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_create_poll_download_remix_extend_delete(client) -> None:
    video = client.videos.create(prompt="a red kite", seconds="2", size="64x64",
                                 extra_body={**CHEAP, "seed": 11, "priority": "interactive"})
    assert video.object == "video" and video.status == "queued" and isinstance(video.created_at, int)
    assert video.priority == "interactive"  # our field, through extra_body and back
    assert video.prompt == "a red kite" and video.size == "64x64" and video.seconds == "2.25"
    assert client.videos.retrieve(video.id).id == video.id

    done = client.videos.poll(video.id, poll_interval_ms=200)
    assert done.status == "completed" and done.progress == 100 and isinstance(done.completed_at, int)
    frames = decode_mp4(client.videos.download_content(video.id).read())
    assert frames.shape == (9, 64, 64, 3)
    thumbnail = Image.open(io.BytesIO(client.videos.download_content(video.id, variant="thumbnail").read()))
    assert thumbnail.format == "JPEG" and thumbnail.size == (64, 64)

    # remix: a new prompt on the same seed and settings
    remix = client.videos.remix(video.id, prompt="a blue kite")
    assert remix.remixed_from_video_id == video.id and remix.prompt == "a blue kite"
    remixed = client.videos.retrieve(remix.id).model_dump()
    assert {key: remixed[key] for key in ("seed", "size", "num_frames", "num_inference_steps", "fps")} == \
        dict(seed=11, size="64x64", num_frames=9, num_inference_steps=2, fps=4)
    assert client.videos.poll(remix.id, poll_interval_ms=200).status == "completed"

    # extend: the original's frames, then an I2V continuation from its last frame
    # openai 3.x sends `video` as a file only (a {"id"} there fails in the client): the reference goes in extra_body
    extension = client.videos.extend(prompt="the kite flies away", seconds="2", video=openai.omit,
                                     extra_body={"video": {"id": video.id}})
    assert extension.model_dump()["extended_from_video_id"] == video.id and extension.seconds == "4.25"
    assert client.videos.poll(extension.id, poll_interval_ms=200).status == "completed"
    longer = decode_mp4(client.videos.download_content(extension.id).read())
    assert longer.shape == (9 + 9 - 1, 64, 64, 3)
    assert_same_video(longer[:9], frames)

    for job_id in (video.id, remix.id, extension.id):
        deleted = client.videos.delete(job_id)
        assert deleted.deleted and deleted.object == "video.deleted" and deleted.id == job_id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_create_and_poll_with_an_input_reference_file(client) -> None:
    video = client.videos.create_and_poll(
        prompt="the green square comes alive", model="skyreels-v1-i2v", size="64x64", seconds="2",
        input_reference=("first.png", _png((20, 200, 40)), "image/png"), poll_interval_ms=200,
        extra_body={**CHEAP, "negative_prompt": "blur"})
    assert video.status == "completed" and video.model == "skyreels-v1-i2v"
    assert video.model_dump()["has_input_reference"] and video.model_dump()["negative_prompt"] == "blur"
    assert decode_mp4(client.videos.download_content(video.id).read()).shape == (9, 64, 64, 3)
    client.videos.delete(video.id)


def test_list_auto_paginates_over_every_page(client) -> None:
    ids = [client.videos.create(prompt=f"page {i}", extra_body={"num_inference_steps": 1}).id for i in range(3)]
    listed = [video.id for video in client.videos.list(limit=1)]
    assert listed[:3] == ids[::-1]
    page = client.videos.list(limit=2)
    assert page.has_more and page.last_id == ids[1]
    for job_id in ids:
        client.videos.delete(job_id)


def test_errors_arrive_as_the_clients_exceptions(client) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match=r"at most 12 s at 24 fps \(289 frames\)"):
        client.videos.create(prompt="too long", seconds="16")
    with pytest.raises(openai.BadRequestError, match="unknown model 'sora-2'"):
        client.videos.create(prompt="a cat", model="sora-2")
    with pytest.raises(openai.NotFoundError):
        client.videos.remix("video_missing", prompt="x")


def test_extend_an_uploaded_clip(client, tmp_path) -> None:
    """`extend(video=open(...))`, the official client's way: the clip's last frame starts the I2V continuation; the
    video is the clip, resized to a size the model takes (96x80 -> 64x64 for the tiny preset's 64x64), then the
    continuation, at the clip's 2 fps."""
    import imageio.v3 as iio
    import numpy as np

    from skyreels.video import encode_mp4

    ramp = np.linspace(0, 255, 96, dtype=np.uint8)
    frames = np.stack([np.stack([np.tile(ramp, (80, 1)), np.full((80, 96), 40 * i, np.uint8),
                                 np.tile(ramp[::-1], (80, 1))], axis=-1) for i in range(5)])
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(encode_mp4(frames, 2))
    with clip.open("rb") as video:
        extension = client.videos.extend(prompt="the colours drift on", seconds="4", video=video)
    assert extension.model == "skyreels-v1-i2v" and extension.size == "64x64"
    assert extension.model_dump()["prefix_frames"] == 5 and extension.seconds == "6.5"  # 5 + 9 - 1 frames at 2 fps
    assert client.videos.poll(extension.id, poll_interval_ms=200).status == "completed"
    stitched = client.videos.download_content(extension.id).read()
    assert decode_mp4(stitched).shape == (5 + 9 - 1, 64, 64, 3)
    assert iio.immeta(stitched, extension=".mp4", plugin="FFMPEG")["fps"] == 2
    client.videos.delete(extension.id)

    with pytest.raises(openai.UnprocessableEntityError, match="video is not mp4 or webm"):
        client.videos.extend(prompt="more", seconds="4", video=("clip.gif", _png((1, 2, 3)), "image/gif"))
    too_long = tmp_path / "long.webm"
    iio.imwrite(too_long, np.zeros((31, 64, 64, 3), np.uint8), extension=".webm", plugin="FFMPEG", fps=1,
                codec="libvpx-vp9")
    with too_long.open("rb") as video, pytest.raises(openai.APIStatusError, match="at most 30 s") as refused:
        client.videos.extend(prompt="more", seconds="4", video=video)
    assert refused.value.status_code == 413
