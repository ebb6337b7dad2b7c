"""One torch.distributed group per DiT gang: NCCL on GPUs, gloo on CPU."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


FAKE_BACKEND = "fake"  # torch's own, for one process standing in for one rank of a group of any size


@dataclass(frozen=True)
class GroupSpec:
    rank: int
    world_size: int
    master_addr: str
    master_port: int
    device: str  # "cpu" or "cuda"
    cuda_index: int = 0  # Ray gives each worker one visible GPU; a local gang uses GPU `rank`
    timeout_s: float = 300.0
    # "fake" (skyreels preflight): this process alone plays its rank, every collective returns at once
    backend_override: str | None = None

    @property
    def backend(self) -> str:
        if self.backend_override is not None:
            return self.backend_override
        return "nccl" if self.device == "cuda" else "gloo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def init_group(spec: GroupSpec) -> None:
    """Join this process to the gang's group (blocks until every rank has joined)."""
    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a process group")
    if spec.device == "cuda":
        _watch_nccl(spec.timeout_s)
        torch.cuda.set_device(spec.cuda_index)
    if spec.backend == FAKE_BACKEND:
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group(FAKE_BACKEND, store=FakeStore(), rank=spec.rank, world_size=spec.world_size)
        return
    dist.init_process_group(
        backend=spec.backend,
        init_method=f"tcp://{spec.master_addr}:{spec.master_port}",
        rank=spec.rank,
        world_size=spec.world_size,
        timeout=timedelta(seconds=spec.timeout_s),
    )


def _watch_nccl(timeout_s: float) -> None:
    """NCCL's own watchdog: a collective that times out (a peer died or hangs) tears this process down instead of
    leaving it blocked forever, and a stuck watchdog thread is itself detected. Set before the group is made;
    values already in the environment win."""
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # abort the communicators, then the process
    os.environ.setdefault("TORCH_NCCL_ENABLE_MONITORING", "1")
    os.environ.setdefault("TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC", str(int(timeout_s)))
    os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "0")


def any_rank(flag: bool, device: str | torch.device = "cpu") -> bool:
    """True on every rank when `flag` is true on at least one: ranks decide together."""
    if not dist.is_initialized() or dist.get_world_size() == 1 or dist.get_backend() == FAKE_BACKEND:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
