"""API keys and the request gate: who is calling (Bearer key -> owner id) and the request id of every call.

Keys come from the app config, `SKYREELS_API_KEYS` (comma-separated) and the file named by
`SKYREELS_API_KEYS_FILE` (one a line, `#` comments), each either the key itself or `sha256:<hex of its
SHA-256>`. Only the hashes are kept; a presented key is hashed and compared with every stored hash in
constant time. A key's owner id, `key_` + the first 16 hex digits of its hash, names the jobs it submits.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.priorities import KeyShare, Priority

logger = logging.getLogger(__name__)

KEYS_ENV, KEYS_FILE_ENV = "SKYREELS_API_KEYS", "SKYREELS_API_KEYS_FILE"
HASHED = re.compile(r"^sha256:([0-9a-f]{64})$")
SANE_REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")
# The web page's <video>, <img> and EventSource cannot send headers: it keeps the key in this cookie
# (SameSite=Strict), which is accepted on reads (GET) only, so that no other site can make a browser submit.
KEY_COOKIE = "skyreels_api_key"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_PREFIXES = ("/static/",)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class AccessConfig(BaseModel):
    """Who may call the HTTP API, and how much (AppConfig's `access`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_keys: list[str] = Field(default_factory=list, description="Keys, each as itself or as `sha256:<hex>` "
                                "(better in a config file); joined with SKYREELS_API_KEYS and SKYREELS_API_KEYS_FILE. "
                                "None anywhere: no authentication.")
    max_jobs_in_flight: int | None = Field(4, ge=1, description="Queued and running jobs one key may have; "
                                           "more get 429. None: no limit.")
    max_submits_per_minute: int | None = Field(30, ge=1, description="Submits (create, remix, extend) one key "
                                               "may make in any 60 s; more get 429. None: no limit.")
    default_max_priority: Priority = Field(Priority.INTERACTIVE, description="The highest priority class a key "
                                           "not named in `keys` may ask for; above it: 403. Without keys every "
                                           "client may use every class.")
    keys: dict[str, KeyShare] = Field(default_factory=dict, description="Per key, by its id (key_ + the first 16 "
                                      "hex digits of its SHA-256, as jobs show in `owner`): its highest class and "
                                      "its weight in fair sharing.")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def owner_id(digest: str) -> str:
    return f"key_{digest[:16]}"


class ApiKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._hashes = [match[1] if (match := HASHED.match(key)) else key_hash(key)
                        for key in (key.strip() for key in keys) if key]

    @classmethod
    def load(cls, config: AccessConfig, environ: Mapping[str, str] = os.environ) -> ApiKeys:
        keys = [*config.api_keys, *environ.get(KEYS_ENV, "").split(",")]
        if path := environ.get(KEYS_FILE_ENV):
            keys += [line for line in Path(path).read_text().splitlines() if not line.lstrip().startswith("#")]
        api_keys = cls(keys)
        logger.info("API keys: %s", f"{len(api_keys._hashes)} configured" if api_keys.enabled else "none (open)")
        return api_keys

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def owner(self, key: str) -> str | None:
        """The key's owner id, or None for a key that is not configured."""
        digest = key_hash(key)
        matches = [hmac.compare_digest(digest, stored) for stored in self._hashes]  # all of them: constant time
        return owner_id(digest) if any(matches) else None


def bearer_key(headers: Headers, method: str) -> str | None:
    scheme, _, key = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    if method in ("GET", "HEAD"):
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == KEY_COOKIE and value:
                return unquote(value)
    return None


class RequestGate:
    """ASGI middleware: a request id for every request (the client's `X-Request-ID` when sane) in the log
    lines and the response, and, when keys are configured, a valid key on every path but the open ones.
    The caller's owner id lands in `scope["state"]["owner"]` (None without keys). `proxy_echoes`: a proxy in
    front (Serve's) already echoes the client's id, or its own, in the response."""

    def __init__(self, app: ASGIApp, access: Callable[[], tuple[ApiKeys, AccessConfig]],
                 proxy_echoes: bool = False) -> None:
        self.app, self.access, self.proxy_echoes = app, access, proxy_echoes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if SANE_REQUEST_ID.match(given) else secrets.token_hex(16)
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start" and (request_id != given or not self.proxy_echoes):
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            keys, config = self.access()
            owner = None
            if keys.enabled and not _is_open(_route_path(scope), config):
                key = bearer_key(headers, scope["method"])
                owner = keys.owner(key) if key else None
                if owner is None:
                    logger.info("%s %s refused: %s API key", scope["method"], scope["path"],
                                "a wrong" if key else "no")
                    return await _unauthorized(send_with_id, "a wrong API key" if key else "no API key")
            scope.setdefault("state", {})["owner"] = owner
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (`-` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def install_request_id_logging() -> None:
    """serve_app's log lines carry the request id: `... [<request id>] message`."""
    package = logging.getLogger("serve_app")
    if any(isinstance(f, RequestIdFilter) for h in package.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False


def _route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def _is_open(path: str, config: AccessConfig) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


async def _unauthorized(send: Send, what: str) -> None:
    body = json.dumps({"error": {"code": "unauthorized", "message": f"{what}: send `Authorization: Bearer <key>`"}})
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="skyreels"'),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body.encode()})
