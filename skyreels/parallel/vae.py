"""Parallel VAE decode: the gang's ranks share the tiles of diffusers' own tiled decode.

diffusers decodes a large video as overlapping spatial (and temporal) tiles, one `decoder` call
per tile, then blends the overlaps. Here every rank runs that same decode but computes only every
N-th tile (placeholders elsewhere, of the right shape); rank 0 gathers the tiles and replays the
decode with the real tiles, so the blend is diffusers' blend and the result equals one device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from diffusers import AutoencoderKLHunyuanVideo
from torch import nn

from skyreels.parallel.group import FAKE_BACKEND


class _TileDecoder(nn.Module):
    """Stands in for `vae.decoder`: computes this rank's tiles, or replays gathered ones."""

    def __init__(
        self, decoder: nn.Module, rank: int, world_size: int, channels: int, temporal: int, spatial: int
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.rank, self.world_size = rank, world_size
        self.channels = channels
        self.temporal, self.spatial = temporal, spatial
        self.calls = 0
        self.computed: dict[int, torch.Tensor] = {}
        self.replay: dict[int, torch.Tensor] | None = None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        index, self.calls = self.calls, self.calls + 1
        if self.replay is not None:
            return self.replay[index].to(z.device)
        if index % self.world_size == self.rank:
            decoded = self.decoder(z)
            # a copy: diffusers blends the overlaps into the tiles in place
            self.computed[index] = decoded.to("cpu", copy=True)
            return decoded
        batch, _, frames, height, width = z.shape
        shape = (batch, self.channels, (frames - 1) * self.temporal + 1,
                 height * self.spatial, width * self.spatial)
        return z.new_zeros(shape)


@contextmanager
def _decoder_swapped(vae: AutoencoderKLHunyuanVideo, stand_in: nn.Module) -> Iterator[None]:
    original = vae.decoder
    vae.decoder = stand_in
    try:
        yield
    finally:
        vae.decoder = original


@torch.inference_mode()
def parallel_decode(vae: AutoencoderKLHunyuanVideo, latents: torch.Tensor,
                    group: dist.ProcessGroup | None = None) -> torch.Tensor | None:
    """vae.decode(latents) split over the group's ranks; the video on rank 0, None elsewhere.

    In a fake group (skyreels preflight) the lone rank decodes every tile: the same peak on its GPU (one tile at a
    time, then the whole video as rank 0 blends it), without objects to gather from ranks that do not exist."""
    if dist.get_backend(group) == FAKE_BACKEND:
        return vae.decode(latents, return_dict=False)[0]
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    config = vae.config
    tiles = _TileDecoder(vae.decoder, rank, world_size, config.out_channels, config.temporal_compression_ratio,
                         config.spatial_compression_ratio)
    with _decoder_swapped(vae, tiles):
        vae.decode(latents, return_dict=False)
        gathered: list[dict[int, torch.Tensor]] | None = [{} for _ in range(world_size)] if rank == 0 else None
        dist.gather_object(tiles.computed, gathered, dst=dist.get_global_rank(group, 0) if group else 0,
                           group=group)
        if rank != 0:
            return None
        tiles.replay = {index: tile for part in gathered for index, tile in part.items()}
        tiles.calls = 0
        return vae.decode(latents, return_dict=False)[0]
