"""A request's body before any parser reads it: its size and its nesting are limited here, so that a hostile body
gets a 4xx in the API's error shape, never a RecursionError (500) or a connection reset.

A body over the limit is read to its end and dropped (up to DRAIN_BYTES) before the 413 is sent: a server that
answers while the client is still sending closes a connection with unread bytes, the client's send fails with
ECONNRESET and it never reads the answer (the official `openai` client then sends it all again).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_DEPTH = 32  # arrays and objects in arrays and objects; a submit body needs 3 (loras: [{...}])
DRAIN_BYTES = 128 * 2**20  # an over-limit body is read and dropped up to this, so that the client reads the 413
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def error_response(status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The API's one error shape."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code, headers=headers)


def nests_deeper(text: bytes, max_depth: int = MAX_DEPTH) -> bool:
    """Whether JSON `text` has arrays or objects nested more than `max_depth` deep, found without parsing it (and at
    C speed): strings dropped (their brackets are text), then everything but brackets, then each pass removes the
    innermost pairs. Unmatched brackets are left for the parser to refuse."""
    brackets = _STRING.sub(b"", text).translate(None, delete=_NOT_BRACKETS)
    for _ in range(max_depth):
        brackets, before = brackets.replace(b"[]", b"").replace(b"{}", b""), brackets
        if brackets == before:
            return False
    return b"[]" in brackets or b"{}" in brackets


def too_deep_message(what: str) -> str:
    return f"{what} nests arrays or objects more than {MAX_DEPTH} deep"


class BodyGuard:
    """ASGI middleware: reads a request's whole body once, within `limit()` bytes, and hands it on to the app;
    413 for a bigger one (read and dropped first, see the module), 400 for JSON nested more than MAX_DEPTH deep.
    Form fields that hold JSON (a multipart `loras`) are checked where they are read."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODYLESS_METHODS:
            return await self.app(scope, receive, send)
        limit = self.limit()
        headers = Headers(scope=scope)
        declared = int(headers["content-length"]) if headers.get("content-length", "").isdigit() else 0
        body, received = bytearray(), 0
        more = declared <= DRAIN_BYTES
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received <= limit:
                body += chunk
            more = message.get("more_body", False) and received <= DRAIN_BYTES  # a body of no stated length too
        if declared > limit or received > limit:
            # not read to its end (over DRAIN_BYTES): the connection is closed, as it would be anyway
            closing = {} if max(declared, received) <= DRAIN_BYTES else {"Connection": "close"}
            response = error_response(413, "body_too_large", f"the body is larger than {limit // 2**20} MiB (the "
                                      "image limit, as a data URL, plus the fields)", headers=closing)
            return await response(scope, receive, send)
        content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if (content_type == "application/json" or content_type.endswith("+json")) and nests_deeper(bytes(body)):
            response = error_response(400, "invalid_json", too_deep_message("the body"))
            return await response(scope, receive, send)
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` that gives the body already read, then what the client sends next (its disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
