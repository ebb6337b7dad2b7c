"""The OpenAPI document is the contract: schemathesis fuzzes every documented operation of the running app
with all of its checks (status codes, response schemas, content types, headers, negative and positive data), in
every phase (examples, coverage, fuzzing, and stateful sequences through the links it infers): the random ones
(fuzzing, stateful) under three fixed seeds, the deterministic ones (examples, coverage) under the first.

Bounded: a few examples per operation and seed. Each generated job is made cheap before it is sent (a value
keeps its validity: a valid size becomes 64x64, a valid frame count 1, ...), and a generated Idempotency-Key is
made unique (one key with two bodies is rightly refused), so that fuzzing never leaves the CPUs rendering a
1280x1280 video; the stateless cases delete their job at once.
"""

from __future__ import annotations

import contextlib
import re
import uuid

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402  (schemathesis brings hypothesis)

from serve_app.requests import SIZE_PATTERN, InvalidRequest, frames_for  # noqa: E402
from skyreels.request import MAX_FRAMES, MAX_SIZE, MAX_STEPS, MIN_SIZE, SIZE_MULTIPLE  # noqa: E402

pytestmark = pytest.mark.slow

SEEDS = (1, 2, 3)
MAX_EXAMPLES = 10  # per operation, seed and phase
STATEFUL_SEQUENCES = 10
JOB_ID = re.compile(r'"id":\s*"(video_[0-9a-f]+)"')
SECONDS_TEXT = re.compile(r"^\s*\d+(\.\d+)?\s*$")  # OpenAI's `seconds`, a string


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{seed}" for seed in SEEDS])
def api_schema(request: pytest.FixtureRequest, serve_base_url: str):
    config = schemathesis.Config.from_dict({
        "seed": request.param,
        "generation": {"max-examples": MAX_EXAMPLES},
        # examples and coverage do not draw at random: once is enough; fuzzing and stateful run under every seed
        "phases": {"examples": {"enabled": request.param == SEEDS[0]},
                   "coverage": {"enabled": request.param == SEEDS[0]}},
        # Rules a JSON schema cannot say (a multiple of 16 inside "WxH", 4k+1 frames, an image for the I2V
        # model, seconds or num_frames) are answered 422 with the rule: a schema-valid submit may get it.
        "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "404", "409", "422", "429"]}},
    })
    return schemathesis.openapi.from_url(f"{serve_base_url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


def _cheap(name: str, value: object, fps: object) -> object:
    """A cheaper value of the same validity (`fps`: the body's, which `seconds` are counted in)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value
    if name == "num_inference_steps" and isinstance(value, int) and 1 <= value <= MAX_STEPS:
        return 1
    if name == "num_frames" and isinstance(value, int) and 1 <= value <= MAX_FRAMES and (value - 1) % 4 == 0:
        return 1
    if name == "seconds" and (isinstance(value, (int, float)) or SECONDS_TEXT.match(value)):
        fps = fps if isinstance(fps, int) and not isinstance(fps, bool) and 1 <= fps <= 60 else 24
        with contextlib.suppress(InvalidRequest):  # valid as the server counts it: cheap
            if float(value) > 0 and frames_for(float(value), fps):
                return 0.01 if isinstance(value, (int, float)) else "0.01"
    if name == "size" and isinstance(value, str) and (match := SIZE_PATTERN.match(value.strip())):
        sides = [int(side) for side in match.groups()]
        if all(MIN_SIZE <= side <= MAX_SIZE and side % SIZE_MULTIPLE == 0 for side in sides):
            return "64x64"
    return value


def _made_cheap(case) -> None:
    if isinstance(case.body, dict):
        case.body = {name: _cheap(name, value, case.body.get("fps", 24)) for name, value in case.body.items()}
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = f"{case.headers['Idempotency-Key']}-{uuid.uuid4().hex}"[-255:]


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_the_app_keeps_its_openapi_contract(case, serve_base_url: str) -> None:
    _made_cheap(case)
    response = case.call(base_url=serve_base_url)
    try:
        assert response.status_code < 500, f"{case.operation.label} answered {response.status_code}: {response.text}"
        case.validate_response(response)
    finally:
        if response.status_code == 202 and (created := JOB_ID.search(response.text)):
            httpx.delete(f"{serve_base_url}/v1/videos/{created[1]}", timeout=300)  # a busy machine cancels slowly


def test_stateful_sequences_keep_the_contract(api_schema, serve_base_url: str) -> None:
    """Create, then get, cancel, remix, extend, download or delete what was created, as the links say."""

    class Sequences(api_schema.as_state_machine()):
        def before_call(self, case) -> None:
            _made_cheap(case)

        def get_call_kwargs(self, case) -> dict:
            return {"base_url": serve_base_url}

    Sequences.run(settings=settings(max_examples=STATEFUL_SEQUENCES, stateful_step_count=5, deadline=None,
                                    suppress_health_check=list(HealthCheck)))
