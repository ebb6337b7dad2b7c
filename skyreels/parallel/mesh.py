"""The DiT mesh: cfg_degree x ulysses_degree ranks over one torch.distributed group.

Rank r sits at cfg index r // ulysses_degree and Ulysses index r % ulysses_degree: the ranks of
one CFG branch are contiguous (on one NVLink island), and each Ulysses group runs one branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

SUPPORTED_WORLD_SIZES = (1, 2, 3, 4, 6, 8)


@dataclass(frozen=True)
class MeshShape:
    world_size: int
    cfg_degree: int
    ulysses_degree: int

    @classmethod
    def plan(cls, world_size: int, num_heads: int, true_cfg: bool = True, sequence_batch: bool = False) -> MeshShape:
        """CFG parallel (2) when CFG is on, the world is even and branches may run side by side."""
        if world_size not in SUPPORTED_WORLD_SIZES:
            raise ValueError(f"gpu_num must be one of {SUPPORTED_WORLD_SIZES}, got {world_size}")
        cfg_degree = 2 if true_cfg and not sequence_batch and world_size % 2 == 0 else 1
        ulysses_degree = world_size // cfg_degree
        if num_heads % ulysses_degree:
            raise ValueError(
                f"{world_size} GPUs give a Ulysses degree of {ulysses_degree}, which does not divide the "
                f"{num_heads} attention heads; use a GPU count whose Ulysses degree divides {num_heads}"
            )
        return cls(world_size, cfg_degree, ulysses_degree)


class DeviceMesh:
    """The process groups of one mesh shape; built collectively by every rank of the world."""

    def __init__(self, shape: MeshShape) -> None:
        if dist.get_world_size() != shape.world_size:
            raise ValueError(f"the mesh needs {shape.world_size} ranks, the group has {dist.get_world_size()}")
        self.shape = shape
        self.rank = dist.get_rank()
        self.cfg_rank, self.ulysses_rank = divmod(self.rank, shape.ulysses_degree)
        # new_group is collective: every rank creates every group, in the same order
        ulysses_groups = [
            dist.new_group(list(range(c * shape.ulysses_degree, (c + 1) * shape.ulysses_degree)))
            for c in range(shape.cfg_degree)
        ]
        cfg_groups = [
            dist.new_group(list(range(u, shape.world_size, shape.ulysses_degree)))
            for u in range(shape.ulysses_degree)
        ]
        self.ulysses_group = ulysses_groups[self.cfg_rank]
        self.cfg_group = cfg_groups[self.ulysses_rank]

    @property
    def ulysses_degree(self) -> int:
        return self.shape.ulysses_degree

    @property
    def cfg_degree(self) -> int:
        return self.shape.cfg_degree
