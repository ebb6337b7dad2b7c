"""The OpenAPI document is the contract: schemathesis fuzzes every documented operation of the running app
with all of its checks (status codes, response schemas, content types, headers, negative and positive data).

Bounded: a few examples per operation. Each generated job is made cheap before it is sent (a value keeps its
validity: a valid size becomes 64x64, a valid frame count 1, ...) and deleted at once, so that fuzzing never
leaves the CPUs rendering a 1280x1280 video.
"""

from __future__ import annotations

import re

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402  (schemathesis brings hypothesis)

from serve_app.requests import SIZE_PATTERN  # noqa: E402
from skyreels.request import MAX_FRAMES, MAX_SIZE, MAX_STEPS, MIN_SIZE, SIZE_MULTIPLE  # noqa: E402

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 25
JOB_ID = re.compile(r'"id":\s*"(video_[0-9a-f]+)"')


@pytest.fixture(scope="module")
def api_schema(serve_base_url: str):
    config = schemathesis.Config.from_dict({
        # Rules a JSON schema cannot say (a multiple of 16 inside "WxH", 4k+1 frames, an image for the I2V
        # model, seconds or num_frames) are answered 422 with the rule: a schema-valid submit may get it.
        "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "404", "409", "422", "429"]}},
    })
    return schemathesis.openapi.from_url(f"{serve_base_url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


def _cheap(name: str, value: object) -> object:
    """A cheaper value of the same validity."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value
    if name == "num_inference_steps" and isinstance(value, int) and 1 <= value <= MAX_STEPS:
        return 1
    if name == "num_frames" and isinstance(value, int) and 1 <= value <= MAX_FRAMES and (value - 1) % 4 == 0:
        return 1
    if name == "seconds" and isinstance(value, (int, float)) and 0 < value <= 12:
        return 0.01
    if name == "size" and isinstance(value, str) and (match := SIZE_PATTERN.match(value.strip())):
        sides = [int(side) for side in match.groups()]
        if all(MIN_SIZE <= side <= MAX_SIZE and side % SIZE_MULTIPLE == 0 for side in sides):
            return "64x64"
    return value


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_app_keeps_its_openapi_contract(case, serve_base_url: str) -> None:
    if isinstance(case.body, dict):
        case.body = {name: _cheap(name, value) for name, value in case.body.items()}
    response = case.call(base_url=serve_base_url)
    try:
        assert response.status_code < 500, f"{case.operation.label} answered {response.status_code}: {response.text}"
        case.validate_response(response)
    finally:
        if response.status_code == 202 and (created := JOB_ID.search(response.text)):
            httpx.delete(f"{serve_base_url}/v1/videos/{created[1]}", timeout=60)
