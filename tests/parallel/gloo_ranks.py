"""Run a function on N gloo ranks in spawned processes and collect every rank's return value."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

from skyreels.parallel.group import GroupSpec, destroy_group, free_port, init_group


def run_ranks(world_size: int, function: Callable[..., Any], *args: Any, timeout_s: float = 300) -> list[Any]:
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=_main, args=(rank, world_size, port, function, args, results))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    collected: dict[int, Any] = {}
    try:
        for _ in range(world_size):
            rank, ok, value = results.get(timeout=timeout_s)
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            collected[rank] = value
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    return [collected[rank] for rank in range(world_size)]


def _main(rank: int, world_size: int, port: int, function, args, results) -> None:
    try:
        init_group(GroupSpec(rank, world_size, "127.0.0.1", port, "cpu"))
        results.put((rank, True, function(rank, *args)))
    except Exception:  # noqa: BLE001 - the parent raises it with the rank's traceback
        results.put((rank, False, traceback.format_exc()))
    finally:
        destroy_group()
