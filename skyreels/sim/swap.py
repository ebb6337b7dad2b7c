"""The weight swap of a sim gang serving several models: the stand-in DiT takes the other task after holding
the gang for the profile's swap time (SimProfile.weight_swap_seconds)."""

from __future__ import annotations

import logging
import time

from skyreels.request import Task
from skyreels.sim.source import SimOptions
from skyreels.sim.stages import SimDenoiseStage
from skyreels.weights import check_served

logger = logging.getLogger(__name__)


class SimWeightBank:
    def __init__(self, stage: SimDenoiseStage, served: tuple[Task, ...], options: SimOptions) -> None:
        self.stage = stage
        self.served = served
        self.options = options

    @property
    def active(self) -> Task:
        return self.stage.task

    def activate(self, task: Task) -> float:
        if task is self.stage.task:
            return 0.0
        check_served(task, self.served)
        start = time.perf_counter()
        self.options.hold(self.options.timings.weight_swap_seconds)
        self.stage.task = task
        seconds = time.perf_counter() - start
        logger.info("sim: swapped the transformer's weights to %s in %.3f s", task.value, seconds)
        return seconds
