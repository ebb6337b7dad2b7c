"""Runs one part of a benchmark in its own process, under a time limit, and says how it ended.

Every part gets a fresh process: its GPU memory, peak statistics and CUDA context are its own, and a part that
crashes or hangs costs only itself. The processes fork from a server that imported the preload once
(multiprocessing's forkserver), so a part does not pay those imports again. The preload must never ask CUDA anything
(on a CUDA build even torch.cuda.is_available() poisons the fork): torch alone is safe.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import time
import traceback
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

logger = logging.getLogger(__name__)

Status = Literal["ok", "failed", "skipped", "timed_out"]


class PartSkipped(Exception):
    """Raised by a part that cannot run here (e.g. it needs CUDA); the message says why."""


class PartResult(BaseModel):
    name: str
    status: Status
    wall_seconds: float  # from the process's start (the first one also waits for the server's imports) to its end
    reason: str | None = None  # the error, the skip reason or the time limit
    figures: dict[str, Any] = {}


class PartRunner:
    def __init__(self, preload: list[str], scratch: Path) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(preload)
        self._scratch = scratch

    def run(self, name: str, function: str, args: tuple, timeout_s: float) -> PartResult:
        """`module:function`(*args) in a child process; its figures, or why there are none."""
        result_file = self._scratch / f"{name}.json"
        start = time.monotonic()
        process = self._context.Process(target=_run_child, args=(name, function, args, result_file), name=name)
        process.start()
        process.join(timeout_s)
        if process.is_alive():
            process.kill()
            process.join()
            return PartResult(name=name, status="timed_out", wall_seconds=time.monotonic() - start,
                              reason=f"stopped after its limit of {timeout_s:.0f} s")
        if not result_file.is_file():
            return PartResult(name=name, status="failed", wall_seconds=time.monotonic() - start,
                              reason=f"the process died with exit code {process.exitcode}")
        result = PartResult.model_validate_json(result_file.read_text())
        return result.model_copy(update={"wall_seconds": time.monotonic() - start})


def _run_child(name: str, function: str, args: tuple, result_file: Path) -> None:
    """Writes the part's PartResult (its wall time is the parent's to measure) to `result_file`."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(name)s: %(message)s", force=True)
    module, attribute = function.split(":")
    try:
        part = getattr(importlib.import_module(module), attribute)
        result = PartResult(name=name, status="ok", wall_seconds=0.0, figures=part(*args))
    except PartSkipped as skip:
        result = PartResult(name=name, status="skipped", wall_seconds=0.0, reason=str(skip))
    except Exception as error:  # noqa: BLE001 - the error is the part's result; the other parts still run
        logger.error("%s failed:\n%s", name, traceback.format_exc())
        result = PartResult(name=name, status="failed", wall_seconds=0.0, reason=repr(error)[:2000])
    staging = result_file.with_suffix(".tmp")
    staging.write_text(json.dumps(result.model_dump(), default=_scalar))
    staging.rename(result_file)


def _scalar(value: Any) -> Any:
    """numpy and torch scalars in a part's figures, as Python numbers."""
    return value.item()
