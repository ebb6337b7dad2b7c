"""How long-running work reports progress and is stopped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StepProgress:
    step: int  # 1-based: the number of denoising steps done
    total: int


StepCallback = Callable[[StepProgress], None]


class GenerationCancelled(Exception):
    """Raised by a step callback to stop a generation between two denoising steps."""
