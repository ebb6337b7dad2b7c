"""Per-key limits on submits: jobs in flight and submits per minute, answered 429 with Retry-After; the priority
classes a key may use, answered 403."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from serve_app.priorities import KeyShare, Priority
from serve_app.requests import ApiError

WINDOW_S = 60.0


class TooManyRequests(ApiError):
    def __init__(self, message: str, retry_after_s: int, code: str = "rate_limited") -> None:
        super().__init__(message, 429, code)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.message, self.retry_after_s, self.code)


class SubmitLimits:
    """Checks one owner's submit against its limits, and counts it when accepted (`admit`)."""

    def __init__(self, max_in_flight: int | None, per_minute: int | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_in_flight, self.per_minute, self.clock = max_in_flight, per_minute, clock
        self._recent: dict[str, deque[float]] = {}

    def admit(self, owner: str, in_flight: int) -> None:
        """Raises TooManyRequests when `owner`, with `in_flight` jobs queued or running, may not submit now."""
        if self.max_in_flight is not None and in_flight >= self.max_in_flight:
            raise TooManyRequests(f"this API key has {in_flight} jobs queued or running, its limit; submit again "
                                  "when one ends", retry_after_s=5, code="too_many_jobs")
        if self.per_minute is None:
            return
        now = self.clock()
        recent = self._recent.setdefault(owner, deque())
        while recent and recent[0] <= now - WINDOW_S:
            recent.popleft()
        if len(recent) >= self.per_minute:
            raise TooManyRequests(f"this API key may submit {self.per_minute} jobs a minute",
                                  retry_after_s=max(1, math.ceil(recent[0] + WINDOW_S - now)))
        recent.append(now)


class PriorityRefused(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 403, "priority_not_allowed")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.message,)


class PriorityPolicy:
    """Each submit's class and fair-sharing weight, refusing a class above the key's allowance."""

    def __init__(self, default: Priority, default_max: Priority, keys: dict[str, KeyShare]) -> None:
        self.default, self.default_max, self.keys = default, default_max, keys

    def admit(self, owner: str | None, requested: Priority | None) -> tuple[Priority, float]:
        """The job's class and its key's weight; `owner` None (no keys configured, or a trusted caller): any class,
        weight 1. PriorityRefused for a class above the key's."""
        share = self.keys.get(owner, KeyShare()) if owner is not None else KeyShare(max_priority=Priority.INTERACTIVE)
        allowed = share.max_priority or self.default_max
        priority = requested or min(self.default, allowed, key=lambda p: -p.rank)
        if not priority.at_most(allowed):
            lower = [p.value for p in Priority if p.at_most(allowed)]
            raise PriorityRefused(f"priority {priority.value!r} is above this API key's allowance; allowed: "
                                  f"{', '.join(lower)}")
        return priority, share.weight
