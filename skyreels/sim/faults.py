"""Faults the sim stages inject on request, for fault tests.

A prompt asks for them: `#fail-<stage>` makes the stage raise SimulatedFailure, `#crash-<stage>` ends its
process (on a gang, the last rank's: a peer dies while the others wait in a collective), for the stages
`text`, `denoise` and `decode`. The request reaches each stage as data only, so the plan rides along in it:
in the first element of the CLIP pooled embedding, then of the latents (`mark` / `read`). `SimOptions.fail_rate`
adds failures at random.
"""

from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import dataclass
from enum import IntFlag

import torch

logger = logging.getLogger(__name__)

MARKER = re.compile(r"#(fail|crash)-(text|denoise|decode)\b")
# Far beyond any value of Gaussian noise or an embedding, so the element holds a plan, not data; with the six
# flags added still an integer below 256, which bfloat16 holds exactly.
SENTINEL = 128.0


class SimulatedFailure(RuntimeError):
    """A failure the sim was asked for."""


class Fault(IntFlag):
    FAIL_TEXT = 1
    FAIL_DENOISE = 2
    FAIL_DECODE = 4
    CRASH_TEXT = 8
    CRASH_DENOISE = 16
    CRASH_DECODE = 32


@dataclass(frozen=True)
class FaultPlan:
    faults: Fault = Fault(0)

    @classmethod
    def from_prompt(cls, prompt: str) -> FaultPlan:
        faults = Fault(0)
        for action, stage in MARKER.findall(prompt):
            faults |= Fault[f"{action}_{stage}".upper()]
        return cls(faults)

    def mark(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` carrying the plan in its first element (none to carry: unchanged)."""
        if self.faults:
            tensor.view(-1)[0] = SENTINEL + int(self.faults)
        return tensor

    @classmethod
    def read(cls, tensor: torch.Tensor) -> FaultPlan:
        first = float(tensor.reshape(-1)[0])
        return cls(Fault(round(first - SENTINEL))) if first >= SENTINEL else cls()

    def strike(self, stage: str, fail_rate: float, chance: random.Random | None = None,
               crashes_here: bool = True) -> None:
        """Raises (or ends the process) when the plan, or `chance` (the process's by default), says `stage`
        fails now."""
        if self.faults & _flag("CRASH", stage) and crashes_here:
            logger.error("sim: crashing this process in %s, as the prompt asked", stage)
            os._exit(1)
        if self.faults & _flag("FAIL", stage):
            raise SimulatedFailure(f"the prompt asked the sim's {stage} stage to fail")
        if (chance or random.Random()).random() < fail_rate:
            raise SimulatedFailure(f"the sim's {stage} stage failed at random (fail_rate {fail_rate})")


def _flag(action: str, stage: str) -> Fault:
    """The flag of `action` on `stage`; none for a stage no prompt can reach (the I2V image encode)."""
    return Fault.__members__.get(f"{action}_{stage.upper()}", Fault(0))
