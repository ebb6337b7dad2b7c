"""What each process of a layout holds on its GPU: the preflight's plays (skyreels.preflight), made once at the
workload of record and kept in `process_memory.json`, so that the planner can check hundreds of candidates in
milliseconds. A play's peak does not depend on the GPU type (only what fits does), so one table serves them all.

    python -m skyreels.planner.memory   # plays every process below on fake CUDA (about 20 minutes on 2 cores)

A gang of a size not played takes the played size just below it (a smaller gang holds the larger shard of the
sequence: the conservative side). `skyreels plan` then runs the full preflight on the config it writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from skyreels.preflight.budget import GpuPlan, Tenant, other_ranks
from skyreels.preflight.gpus import GpuType
from skyreels.preflight.run import ProcessMemory

logger = logging.getLogger(__name__)

TABLE = Path(__file__).with_name("process_memory.json")
Precision = Literal["lossless", "fp8", "offload", "fp8+offload"]
PLAYED_GANGS = (1, 2, 4, 8)
PRECISIONS: tuple[Precision, ...] = ("lossless", "fp8", "offload", "fp8+offload")


class ProcessKey(BaseModel):
    """One played process: a gang rank 0 (of `world_size`, decoding its share of the VAE or not), the
    TextEncoder or the Vae, serving T2V and I2V (weights swapped in place) at 544x960x97."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["gang_rank", "text_encoder", "vae"]
    world_size: int = Field(1, ge=1)
    decode: bool = False
    precision: Precision = "lossless"

    def name(self) -> str:
        if self.role != "gang_rank":
            return f"{self.role} {self.precision}"
        return f"gang of {self.world_size} {self.precision}{' decoding' if self.decode else ''}"


class PlayedProcess(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: ProcessKey
    gpu_allocated: int
    host_pageable: int
    host_pinned: int
    side_streams: int

    def memory(self, world_size: int) -> ProcessMemory:
        return ProcessMemory(gpu_allocated=self.gpu_allocated, host_pageable=self.host_pageable,
                             host_pinned=self.host_pinned, side_streams=self.side_streams, world_size=world_size)


def played_keys() -> list[ProcessKey]:
    gangs = [ProcessKey(role="gang_rank", world_size=world, decode=decode, precision=precision)
             for precision in PRECISIONS for world in PLAYED_GANGS for decode in (False, True)]
    return [*gangs, ProcessKey(role="text_encoder"), ProcessKey(role="text_encoder", precision="fp8"),
            ProcessKey(role="vae")]


class MemoryTable:
    """The played processes, and what the GPUs of a layout's node hold made of them."""

    def __init__(self, processes: list[PlayedProcess]) -> None:
        self._by_key = {process.key: process for process in processes}

    @classmethod
    def load(cls, path: Path = TABLE) -> MemoryTable:
        return cls([PlayedProcess.model_validate(item) for item in json.loads(path.read_text())])

    def tenant(self, key: ProcessKey, label: str) -> Tenant:
        played_world = max(w for w in PLAYED_GANGS if w <= key.world_size) if key.role == "gang_rank" else 1
        process = self._by_key[key.model_copy(update={"world_size": played_world})]
        return Tenant(label, process.memory(key.world_size))

    def gang_gpus(self, world_size: int, decode: bool, precision: Precision,
                  beside: tuple[ProcessKey, ...] = ()) -> tuple[GpuPlan, ...]:
        """A gang's GPUs: rank 0 with the stages beside it on its GPU, and the other ranks."""
        rank = self.tenant(ProcessKey(role="gang_rank", world_size=world_size, decode=decode, precision=precision),
                           "rank 0")
        first = GpuPlan("GPU 0", (rank, *(self.tenant(key, key.role) for key in beside)))
        if world_size == 1:
            return (first,)
        return first, GpuPlan(other_ranks(world_size), (Tenant("rank 1", rank.memory),))

    def stage_gpu(self, key: ProcessKey) -> GpuPlan:
        return GpuPlan(f"{key.role}'s GPU", (self.tenant(key, key.role),))


def fits(plans: tuple[GpuPlan, ...], gpu: GpuType) -> bool:
    return all(plan.need_bytes <= gpu.memory_bytes for plan in plans)


def play_all(out: Path = TABLE) -> list[PlayedProcess]:
    """Plays every key on fake CUDA (an H100: the peaks do not depend on the type) and writes the table."""
    from skyreels.optimize.config import OptimizeConfig
    from skyreels.preflight.gpus import gpu_type
    from skyreels.preflight.run import ProcessPlan, Role, play
    from skyreels.request import GenerationRequest, Task

    request = GenerationRequest(prompt="a preflight", height=544, width=960, num_frames=97, num_inference_steps=30)
    roles = {"gang_rank": Role.GANG_RANK, "text_encoder": Role.TEXT_ENCODER, "vae": Role.VAE}
    played = []
    for key in played_keys():
        started = time.perf_counter()
        optimize = OptimizeConfig(quant="fp8" if key.precision.startswith("fp8") else "none",
                                  offload=key.precision.endswith("offload"))
        memory = play(ProcessPlan(role=roles[key.role], task=Task.T2V, request=request, optimize=optimize,
                                  world_size=key.world_size, decode=key.decode,
                                  served=(Task.T2V, Task.I2V) if key.role == "gang_rank" else ()),
                      gpu_type("H100-80GB"))
        played.append(PlayedProcess(key=key, gpu_allocated=memory.gpu_allocated, host_pageable=memory.host_pageable,
                                    host_pinned=memory.host_pinned, side_streams=memory.side_streams))
        logger.info("%s: %.1f GiB in %.0f s", key.name(), memory.gpu_allocated / 2**30, time.perf_counter() - started)
        out.write_text(json.dumps([p.model_dump() for p in played], indent=1) + "\n")  # what is played so far
    return played


def main() -> None:
    parser = argparse.ArgumentParser(description="Plays the planner's processes on fake CUDA.")
    parser.add_argument("--out", type=Path, default=TABLE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    play_all(args.out)


if __name__ == "__main__":
    main()
