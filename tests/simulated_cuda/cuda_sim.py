"""A CUDA build of torch, simulated on the CPU wheel: every question a process asks CUDA is recorded and answered
as one H100 would answer it.

On the CPU wheel `torch.version.cuda` is None, so libraries skip their CUDA queries (torchao's `is_sm_at_least_100()`
among them) and the faults those queries cause on a GPU host stay hidden: a process that asks CUDA anything before it
forks leaves its children unable to use CUDA ("Cannot re-initialize CUDA in forked subprocess"; even
`torch.cuda.is_available()` runs cudaGetDeviceCount, which poisons the fork), and a process that asks on the way to
doing CPU work initialises CUDA on a GPU it never uses.

`sitecustomize.py` in this folder installs the simulation: with the folder first on PYTHONPATH, every Python process
started (a forkserver included) simulates a CUDA build from its first line, and its children inherit the record.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import torch

# what one H100 answers; any call to one of these is a CUDA query
ANSWERS: dict[str, Any] = {
    "is_available": True, "device_count": 1, "get_device_capability": (9, 0),
    "get_device_name": "NVIDIA H100 80GB HBM3", "current_device": 0, "init": None, "_lazy_init": None,
    "set_device": None, "synchronize": None, "mem_get_info": (80 * 2**30, 80 * 2**30),
}
QUERIES: list[dict[str, Any]] = []  # {"call", "args", "where": the last frames outside torch.cuda and this file}
_HERE = str(Path(__file__).resolve())


def install() -> None:
    torch.version.cuda = "12.8"
    for name, answer in ANSWERS.items():
        setattr(torch.cuda, name, _recorder(name, answer))


def _recorder(name: str, answer: Any):
    def query(*args: Any, **kwargs: Any) -> Any:
        frames = [frame for frame in traceback.extract_stack()[:-1]
                  if frame.filename != _HERE and "importlib" not in frame.filename]
        QUERIES.append({"call": name, "args": [repr(arg) for arg in args],
                        "where": [f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
                                  for frame in frames[-4:]]})
        return answer

    query.__name__ = name
    return query


def queries() -> dict[str, Any]:
    """What this process (and, forked, its parent) asked CUDA so far; a part function for the part runner."""
    return {"cuda": torch.version.cuda, "queries": list(QUERIES)}
