"""The all-to-all layout of Ulysses, and the mesh plan, on real gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from gloo_ranks import run_ranks
from skyreels.parallel.mesh import MeshShape
from skyreels.parallel.collectives import all_gather_cat, heads_to_sequence, sequence_to_heads

BATCH, LENGTH, HEADS, DIM = 2, 12, 6, 5


def full_tensor() -> torch.Tensor:
    return torch.randn(BATCH, LENGTH, HEADS, DIM, generator=torch.Generator().manual_seed(0))


def _layout(rank: int) -> dict[str, bool]:
    world = dist.get_world_size()
    full = full_tensor()
    shard = full.chunk(world, dim=1)[rank]
    by_heads = sequence_to_heads(shard, dist.group.WORLD)
    heads = slice(rank * HEADS // world, (rank + 1) * HEADS // world)
    return {
        "sequence_to_heads": torch.equal(by_heads, full[:, :, heads]),
        "round_trip": torch.equal(heads_to_sequence(by_heads, dist.group.WORLD), shard),
        "gather": torch.equal(all_gather_cat(shard, dim=1, group=dist.group.WORLD), full),
    }


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_all_to_all_swaps_sequence_for_heads(world_size: int) -> None:
    for rank, checks in enumerate(run_ranks(world_size, _layout)):
        assert all(checks.values()), (rank, checks)


@pytest.mark.parametrize(
    ("world", "cfg", "sequence_batch", "expected"),
    [(1, True, False, (1, 1)), (2, True, False, (2, 1)), (2, True, True, (1, 2)), (2, False, False, (1, 2)),
     (3, True, False, (1, 3)), (4, True, False, (2, 2)), (6, True, False, (2, 3)), (8, True, False, (2, 4))],
)
def test_mesh_plan(world: int, cfg: bool, sequence_batch: bool, expected: tuple[int, int]) -> None:
    shape = MeshShape.plan(world, num_heads=24, true_cfg=cfg, sequence_batch=sequence_batch)
    assert (shape.cfg_degree, shape.ulysses_degree) == expected


def test_mesh_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError, match="gpu_num must be one of"):
        MeshShape.plan(5, num_heads=24)
    with pytest.raises(ValueError, match="does not divide the 12 attention heads"):
        MeshShape.plan(8, num_heads=12, sequence_batch=True)
