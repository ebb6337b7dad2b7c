"""The `sim` model source and its options, given in the source string itself so that they travel wherever a
model source does (the app's `model`, a gang's RankSpec, `--model_id`):

    sim                                              published A800 timings, 1/100 of real time
    sim?time_factor=0.05&profile=quick_sim_profile.json&fail_rate=0.01
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from skyreels.models import SIM
from skyreels.sim.profile import SimProfile, published_a800


class SimOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    time_factor: float = Field(0.01, gt=0, description="Seconds slept per second the stage takes on GPUs: "
                               "0.01 makes a two-minute video last 1.2 s.")
    profile: Path | None = Field(None, description="A SimProfile JSON (benchmarks/gpu/run.sh quick writes one); "
                                 "default: SkyReelsInfer's published A800 figures.")
    fail_rate: float = Field(0.0, ge=0, le=1, description="Probability that a stage call fails, for fault tests "
                             "(a prompt can also ask for it: skyreels.sim.faults).")

    @classmethod
    def parse(cls, source: str) -> SimOptions | None:
        """The options of a `sim` source; None for any other source."""
        parts = urlsplit(source)
        if parts.path != SIM or parts.scheme or parts.netloc:
            return None
        return cls.model_validate(dict(parse_qsl(parts.query, strict_parsing=bool(parts.query))))

    @cached_property
    def timings(self) -> SimProfile:
        return SimProfile.load(self.profile) if self.profile is not None else published_a800()

    def hold(self, gpu_seconds: float) -> None:
        """Stands in for work that takes `gpu_seconds` on the GPUs."""
        time.sleep(gpu_seconds * self.time_factor)
