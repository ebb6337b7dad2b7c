"""`Idempotency-Key`: a POST retried with the same key (by the same owner) gets the job the first one made.

The key is claimed before the job is submitted, so two requests racing with one key make one job: the
second is answered 409 while the first is being submitted. The same key with a different request (another
body or route) is a client's mistake: 422. A key is forgotten with its job (deleted or expired), or when its
request was refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from serve_app.contract import Video
from serve_app.requests import ApiError
from serve_app.store import JobStore

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def fingerprint(route: str, fields: dict[str, Any]) -> str:
    """A digest of the request: its route and fields (files by their content)."""

    def plain(value: Any) -> Any:
        return hashlib.sha256(value).hexdigest() if isinstance(value, bytes) else repr(value)

    return hashlib.sha256(json.dumps([route, fields], sort_keys=True, default=plain).encode()).hexdigest()


async def once(store: JobStore, owner: str | None, key: str | None, request_fingerprint: str,
               submit: Callable[[], Awaitable[Video]], replay: Callable[[str], Video]) -> Video:
    """`submit()`, unless `key` was used before: then `replay(job_id)` of the job it made."""
    if key is None:
        return await submit()
    if not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ApiError(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters", 422, "invalid_idempotency_key")
    claim = store.claim_key(owner, key, request_fingerprint)
    if claim is not None:
        if claim.fingerprint != request_fingerprint:
            raise ApiError(f"this {HEADER} was used with another request; use a new key for a new request", 422,
                           "idempotency_key_reused")
        if claim.job_id is None:
            raise ApiError(f"a request with this {HEADER} is being submitted; retry shortly", 409,
                           "idempotency_key_in_use")
        return replay(claim.job_id)
    try:
        video = await submit()
    except BaseException:
        store.settle_key(owner, key, None)
        raise
    store.settle_key(owner, key, video.id)
    return video
