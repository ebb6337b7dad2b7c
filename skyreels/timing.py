"""Wall-clock timing of named phases into a dict of seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Records the seconds spent in the block as timings[name] (GPU work included)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        timings[name] = time.perf_counter() - start


class Stopwatch:
    """Seconds since it was made, for a phase that ends inside a loop (no block to time)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self._start
