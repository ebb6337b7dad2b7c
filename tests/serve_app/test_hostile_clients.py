"""What a hostile client and a busy server still get right, over real HTTP against the session's app: bodies of
any depth, size or spelling answered with a readable 4xx in the API's error shape, and readiness under load."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import warnings

import httpx
import pytest

from test_exposed_service import until

pytestmark = pytest.mark.slow

DEEP = 100_000
SMALL = {"size": "64x64", "num_frames": 9, "num_inference_steps": 2}
OVER_LIMIT = 30 * 2**20  # the session app takes 20 MiB images: its body limit is about 27 MiB


def _deep_array(depth: int) -> str:
    return "[" * depth + "]" * depth


def _deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _json_body(value: str) -> bytes:
    return ('{"prompt": ' + value + ', "size": "64x64"}').encode()


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/videos", _json_body(_deep_array(DEEP))),
    ("/v1/videos", _json_body(_deep_object(DEEP))),
    ("/v1/videos", b"[" * DEEP),  # unmatched: too deep for the parser too
    ("/v1/videos/extensions", ('{"prompt": "more", "video": ' + _deep_object(DEEP) + "}").encode()),
    ("/v1/videos/video_0123/remix", ('{"prompt": ' + _deep_array(DEEP) + "}").encode()),
], ids=["json-array", "json-object", "json-unmatched", "extend-object", "remix-array"])
def test_deep_json_gets_a_4xx_in_the_error_shape(serve_base_url: str, path: str, body: bytes) -> None:
    response = httpx.post(f"{serve_base_url}{path}", content=body, headers={"content-type": "application/json"},
                          timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("value", [_deep_array(DEEP), _deep_object(DEEP)], ids=["array", "object"])
def test_deep_json_in_a_multipart_field_gets_a_4xx(serve_base_url: str, value: str) -> None:
    response = httpx.post(f"{serve_base_url}/v1/videos", files={"prompt": (None, "a cat"), "loras": (None, value)},
                          timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {"code": "invalid_json",
                                        "message": "loras nests arrays or objects more than 32 deep"}


def test_a_duration_too_long_to_count_is_refused_with_the_rule(serve_base_url: str) -> None:
    response = httpx.post(f"{serve_base_url}/v1/videos", json={"prompt": "a cat", "seconds": 7.49e306})
    assert response.status_code == 422 and "seconds: at most 12 s at 24 fps" in response.json()["error"]["message"]


def test_a_field_and_its_bracketed_fields_together_are_refused(serve_base_url: str) -> None:
    for parts in ({"video": ("clip.mp4", b"\x00\x00\x00\x18ftypmp42"), "video[id]": (None, "video_0123")},
                  {"video[id]": (None, "video_0123"), "video": (None, "video_0123")}):
        response = httpx.post(f"{serve_base_url}/v1/videos/extensions", files={"prompt": (None, "more"), **parts})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["message"] == "video: give video or video[...] fields, not both"


def test_unknown_fields_are_named_with_the_fields_there_are(serve_base_url: str) -> None:
    json_body = httpx.post(f"{serve_base_url}/v1/videos", json={"prompt": "a cat", "stepz": 4, "colour": "red"})
    form_body = httpx.post(f"{serve_base_url}/v1/videos",
                           files={"prompt": (None, "a cat"), "stepz": (None, "4"), "colour": (None, "red")})
    for response in (json_body, form_body):
        assert response.status_code == 422, response.text
        message = response.json()["error"]["message"]
        assert message.startswith("unrecognized fields stepz, colour; the fields are: model, size, "), message
        assert "num_inference_steps" in message
    remix = httpx.post(f"{serve_base_url}/v1/videos/video_0123/remix", json={"prompt": "x", "promt": "y"})
    assert remix.status_code == 422 and remix.json()["error"]["message"] == "unrecognized field promt"


def test_an_over_limit_upload_gets_a_413_that_urllib_httpx_and_openai_read(serve_base_url: str) -> None:
    openai = pytest.importorskip("openai")
    image = b"\x89PNG" + b"0" * OVER_LIMIT
    boundary = "hostile-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na cat\r\n--{boundary}\r\n'
            f'Content-Disposition: form-data; name="input_reference"; filename="big.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{serve_base_url}/v1/videos", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=120)
    assert refused.value.code == 413 and json.load(refused.value)["error"]["code"] == "body_too_large"

    response = httpx.post(f"{serve_base_url}/v1/videos", data={"prompt": "a cat"},
                          files={"input_reference": ("big.png", image, "image/png")}, timeout=120)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"

    sent = []
    http_client = openai.DefaultHttpxClient(event_hooks={"request": [sent.append]}, timeout=120)
    with warnings.catch_warnings(), openai.OpenAI(base_url=f"{serve_base_url}/v1", api_key="unused", max_retries=2,
                                                  http_client=http_client) as client:
        warnings.simplefilter("ignore", DeprecationWarning)  # the package marks the videos API deprecated
        with pytest.raises(openai.APIStatusError) as too_large:
            client.videos.create(prompt="a cat", input_reference=("big.png", io.BytesIO(image), "image/png"))
    assert too_large.value.status_code == 413 and len(sent) == 1  # read, and not sent again


def test_readyz_stays_200_while_the_gang_runs_a_long_job_and_more_queue(serve_base_url: str) -> None:
    with httpx.Client(base_url=serve_base_url, timeout=60) as client:
        long = {"prompt": "a long ride", "size": "192x192", "num_frames": 49, "num_inference_steps": 50}
        jobs = [client.post("/v1/videos", json=long).json()["id"] for _ in range(3)]
        try:
            until(lambda: sum(client.get(f"/v1/videos/{job}").json()["phase"] == "denoising" for job in jobs) >= 2,
                  120, "two jobs at the gang")
            probes = [client.get("/readyz", timeout=10) for _ in range(5)]
            assert [probe.status_code for probe in probes] == [200] * 5, probes[-1].text
            assert probes[-1].json() == {"ready": True, "store": True,
                                         "stages": {"text_encoder": True, "denoiser": True, "vae": True}}
            assert sum(client.get(f"/v1/videos/{job}").json()["status"] == "in_progress" for job in jobs) >= 1
        finally:
            for job in jobs:
                client.post(f"/v1/videos/{job}/cancel")
