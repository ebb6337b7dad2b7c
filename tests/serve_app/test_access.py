"""API keys, the request gate, per-key limits and upload limits: fast, without Ray."""

from __future__ import annotations

import io
import logging
import struct
import zlib

import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serve_app.auth import KEY_COOKIE, AccessConfig, ApiKeys, RequestGate, RequestIdFilter, key_hash, owner_id
from serve_app.limits import SubmitLimits, TooManyRequests
from serve_app.requests import InvalidRequest, UploadLimits, read_image


def gate_client(*keys: str) -> TestClient:
    async def whoami(request: Request) -> JSONResponse:
        logging.getLogger("serve_app.test").info("whoami")
        return JSONResponse({"owner": request.state.owner})

    config = AccessConfig(api_keys=list(keys))
    app = Starlette(routes=[Route(path, whoami) for path in ("/v1/videos", "/healthz", "/readyz", "/")])
    app.add_middleware(RequestGate, access=lambda: (ApiKeys.load(config, {}), config))
    return TestClient(app)


def test_keys_from_config_environment_and_file_stored_hashed(tmp_path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# team B\nkey-from-file\n")
    config = AccessConfig(api_keys=["key-plain", f"sha256:{key_hash('key-hashed')}"])
    keys = ApiKeys.load(config, {"SKYREELS_API_KEYS": "key-env-1, key-env-2", "SKYREELS_API_KEYS_FILE": str(key_file)})
    for key in ("key-plain", "key-hashed", "key-env-1", "key-env-2", "key-from-file"):
        assert keys.owner(key) == owner_id(key_hash(key))
    assert keys.owner("key-wrong") is None and keys.owner("") is None
    assert "key-plain" not in repr(vars(keys))
    assert not ApiKeys.load(AccessConfig(), {}).enabled


def test_without_keys_everything_is_open() -> None:
    with gate_client() as client:
        response = client.get("/v1/videos")
    assert response.status_code == 200 and response.json() == {"owner": None}


def test_with_keys_a_request_needs_a_valid_key_except_health_and_the_page() -> None:
    with gate_client("secret-a", "secret-b") as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic secret-a"}):
            response = client.get("/v1/videos", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
            assert "Traceback" not in response.text and response.headers["www-authenticate"].startswith("Bearer")
        owner_a = client.get("/v1/videos", headers={"Authorization": "Bearer secret-a"}).json()["owner"]
        owner_b = client.get("/v1/videos", headers={"Authorization": "bearer secret-b"}).json()["owner"]
        assert owner_a.startswith("key_") and owner_a != owner_b
        assert [client.get(path).status_code for path in ("/healthz", "/readyz", "/")] == [200, 200, 200]
        # the page's cookie works for reads only: no other site can make a browser submit with it
        client.cookies.set(KEY_COOKIE, "secret-a")
        assert client.get("/v1/videos").json()["owner"] == owner_a
        assert client.post("/v1/videos").status_code in (401, 405)


def test_request_id_is_echoed_when_sane_and_in_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO), gate_client("k") as client:
        given = client.get("/v1/videos", headers={"X-Request-ID": "client-id-1", "Authorization": "Bearer k"})
        insane = client.get("/healthz", headers={"X-Request-ID": "a b" * 100})
        refused = client.get("/v1/videos")
    assert given.headers["x-request-id"] == "client-id-1"
    assert len(insane.headers["x-request-id"]) == 32 and refused.headers["x-request-id"]
    logged = [r.request_id for r in caplog.records if r.getMessage() == "whoami"]
    assert logged == ["client-id-1", insane.headers["x-request-id"]]


def test_limits_in_flight_and_per_minute_with_retry_after() -> None:
    now = [1000.0]
    limits = SubmitLimits(max_in_flight=2, per_minute=3, clock=lambda: now[0])
    with pytest.raises(TooManyRequests) as in_flight:
        limits.admit("key_a", in_flight=2)
    assert in_flight.value.status_code == 429 and in_flight.value.code == "too_many_jobs"
    for _ in range(3):
        limits.admit("key_a", in_flight=0)
        now[0] += 10
    limits.admit("key_b", in_flight=0)  # another key has its own minute
    with pytest.raises(TooManyRequests) as rate:
        limits.admit("key_a", in_flight=0)
    assert rate.value.headers == {"Retry-After": "30"}  # the first of the three leaves the window in 30 s
    now[0] += 30
    limits.admit("key_a", in_flight=0)


def _image(fmt: str, size: tuple[int, int] = (32, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, format=fmt)
    return buffer.getvalue()


def _bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    png = bytearray(_image("PNG", (1, 1)))
    png[16:24] = struct.pack(">II", width, height)  # IHDR data starts after signature, length and type
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def test_upload_limits_bytes_pixels_formats_and_bombs() -> None:
    limits = UploadLimits(max_bytes=50_000, max_pixels=64 * 64)
    assert read_image(_image("PNG"), limits).size == (32, 16)
    assert read_image(_image("JPEG"), limits).mode == "RGB"
    cases = {
        "too many bytes": (_image("BMP", (200, 200)), 413, "image_too_large"),
        "a format not accepted": (_image("GIF"), 422, "unsupported_image_format"),
        "too many pixels": (_image("PNG", (65, 64)), 413, "image_too_large"),
        # a few hundred bytes of PNG that claims 30000x30000 pixels: refused from its header, never decoded
        "a decompression bomb": (_bomb(30000, 30000), 413, "image_too_large"),
        "not an image": (b"hello", 422, "invalid_request"),
    }
    for what, (data, status, code) in cases.items():
        with pytest.raises(InvalidRequest) as refused:
            read_image(data, limits)
        assert (refused.value.status_code, refused.value.code) == (status, code), what
