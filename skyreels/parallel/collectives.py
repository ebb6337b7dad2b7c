"""The collectives of the DiT gang: Ulysses' all-to-alls and an all-gather along one dimension."""

from __future__ import annotations

import torch
import torch.distributed as dist


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(B, S/N, H, D) sequence shard -> (B, S, H/N, D) head shard, ranks' shards in rank order."""
    world = dist.get_world_size(group)
    batch, shard, heads, dim = x.shape
    chunks = x.reshape(batch, shard, world, heads // world, dim).permute(2, 0, 1, 3, 4).contiguous()
    received = torch.empty_like(chunks)
    dist.all_to_all_single(received, chunks, group=group)
    return received.permute(1, 0, 2, 3, 4).reshape(batch, world * shard, heads // world, dim)


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(B, S, H/N, D) head shard -> (B, S/N, H, D) sequence shard: the inverse of sequence_to_heads."""
    world = dist.get_world_size(group)
    batch, length, heads, dim = x.shape
    chunks = x.reshape(batch, world, length // world, heads, dim).permute(1, 0, 2, 3, 4).contiguous()
    received = torch.empty_like(chunks)
    dist.all_to_all_single(received, chunks, group=group)
    return received.permute(1, 2, 0, 3, 4).reshape(batch, length // world, world * heads, dim)


def all_gather_cat(x: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)
