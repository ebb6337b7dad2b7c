"""BodyGuard and the nesting check, on a plain Starlette app (the served app's tests: test_hostile_clients.py)."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from serve_app.bodies import MAX_DEPTH, BodyGuard, nests_deeper


@pytest.mark.parametrize(("text", "deeper"), [
    (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, False),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), True),
    (b'{"a": ' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), True),
    (b'{"prompt": "' + b"[" * 1000 + b'", "loras": [{"name": "ink"}]}', False),  # brackets in a string are text
    (b'{"prompt": "a \\" ' + b"{" * 1000 + b'"}', False),  # an escaped quote does not end the string
    (b"[1, [2], [[3]], {}]" * 1000, False),  # wide is not deep
    (b"[" * 100_000, False),  # unmatched: the parser refuses it
])
def test_nesting_is_measured_without_parsing(text: bytes, deeper: bool) -> None:
    assert nests_deeper(text) is deeper


@pytest.fixture
def client() -> TestClient:
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type=request.headers.get("content-type"))

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    app.add_middleware(BodyGuard, limit=lambda: 100)
    return TestClient(app)


def test_a_body_within_the_limit_reaches_the_app_whole(client: TestClient) -> None:
    assert client.post("/echo", content=b'{"a": [1, 2]}', headers={"content-type": "application/json"}).content == \
        b'{"a": [1, 2]}'
    chunked = client.post("/echo", content=iter([b"x" * 60, b"y" * 40]))  # no content-length
    assert chunked.content == b"x" * 60 + b"y" * 40


def test_over_the_limit_or_too_deep_is_refused_in_the_error_shape(client: TestClient) -> None:
    for body in (b"x" * 101, iter([b"x" * 60, b"y" * 41])):
        refused = client.post("/echo", content=body)
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "body_too_large"
    deep = client.post("/echo", content=b"[" * 40 + b"]" * 40, headers={"content-type": "application/json"})
    assert deep.status_code == 400 and deep.json()["error"] == {
        "code": "invalid_json", "message": "the body nests arrays or objects more than 32 deep"}
    form = client.post("/echo", content=b"[" * 40 + b"]" * 40, headers={"content-type": "text/plain"})
    assert form.status_code == 200  # only JSON bodies are measured here; JSON form fields where they are read
