"""Step caching: diffusers' First-Block cache, which skips the rest of a DiT forward when its first
block's output barely changed since the previous step, with the skip decision taken by the whole gang.

diffusers decides on each process from the residual that process holds. Under Ulysses a rank holds a
slice of the video tokens and under CFG parallel one branch, so ranks deciding alone could skip
different steps and hang in the next all-to-all. Here the decision is one ratio of two sums
all-reduced over the mesh (pad tokens left out): every rank skips the same steps, the steps one
device skips with both CFG branches in one batch.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from skyreels.parallel.joint_attention import JointTokens
from skyreels.parallel.mesh import DeviceMesh
from skyreels.upstream import (
    FBC_LEADER_HOOK, FBCHeadBlockHook, FirstBlockCacheConfig, HookRegistry, hook_argument, hook_registry,
)

logger = logging.getLogger(__name__)


class GangFirstBlockHook(FBCHeadBlockHook):
    """The head-block hook of diffusers' First-Block cache, deciding over a mesh and counting its skips."""

    def __init__(self, state_manager, threshold: float) -> None:
        super().__init__(state_manager, threshold)
        self.mesh: DeviceMesh | None = None
        self.forwards = 0
        self.skips = 0
        self._video_rows: torch.Tensor | None = None

    def new_forward(self, module: nn.Module, *args, **kwargs):
        if self.mesh is not None and self.mesh.ulysses_degree > 1:
            self._video_rows = self._local_video_rows(args, kwargs)
        return super().new_forward(module, *args, **kwargs)

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.forwards = self.skips = 0
        return super().reset_state(module)

    @torch.compiler.disable
    def _should_compute_remaining_blocks(self, hidden_states_residual: torch.Tensor) -> bool:
        self.forwards += 1
        previous = self.state_manager.get_state().head_block_residual
        if previous is None:
            return True
        change, size = (hidden_states_residual - previous).abs(), previous.abs()
        if self._video_rows is not None:  # (B, S/N, C) rows of this rank; the padding rows are not video
            change, size = change * self._video_rows, size * self._video_rows
        sums = torch.stack([change.sum(dtype=torch.float32), size.sum(dtype=torch.float32)])
        if self.mesh is not None and self.mesh.shape.world_size > 1:
            dist.all_reduce(sums)
        compute = (sums[0] / sums[1]).item() > self.threshold
        self.skips += not compute
        return compute

    def _local_video_rows(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """1 for this rank's real video tokens, 0 for the Ulysses pad (see skyreels.parallel.joint_attention)."""
        hidden_states = hook_argument(self, "hidden_states", args, kwargs)
        tokens: JointTokens = hook_argument(self, "attention_mask", args, kwargs)
        shard = hidden_states.shape[1]
        start = self.mesh.ulysses_rank * shard
        rows = torch.arange(start, start + shard, device=hidden_states.device) < tokens.video
        return rows[None, :, None].to(hidden_states.dtype)


def enable_step_cache(transformer: nn.Module, threshold: float) -> None:
    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    registry = _head_block_registry(transformer)
    local = registry.get_hook(FBC_LEADER_HOOK)
    registry.remove_hook(FBC_LEADER_HOOK, recurse=False)
    registry.register_hook(GangFirstBlockHook(local.state_manager, threshold), FBC_LEADER_HOOK)


def share_step_cache_decisions(transformer: nn.Module, mesh: DeviceMesh) -> None:
    """From now on the step cache of `transformer` decides together with the other ranks of `mesh`."""
    step_cache_hook(transformer).mesh = mesh


def log_step_cache_use(transformer: nn.Module) -> None:
    """Logs how many DiT forwards of the last video the cache skipped (each CFG branch counts)."""
    hook = step_cache_hook(transformer)
    logger.info("step cache (threshold %s): skipped %d of %d DiT forwards", hook.threshold, hook.skips, hook.forwards)


def step_cache_use(transformer: nn.Module) -> dict[str, int]:
    """The DiT forwards of the last video that the step cache decided on, and those it skipped
    (DenoiseFigures' fields; none without the cache)."""
    if not transformer.is_cache_enabled:
        return {}
    hook = step_cache_hook(transformer)
    return {"forwards": hook.forwards, "forwards_skipped": hook.skips}


def step_cache_hook(transformer: nn.Module) -> GangFirstBlockHook:
    """The hook that decides: its `threshold` may be changed between videos; `skips` / `forwards` count the last."""
    return _head_block_registry(transformer).get_hook(FBC_LEADER_HOOK)


def _head_block_registry(transformer: nn.Module) -> HookRegistry:
    for module in transformer.modules():
        registry = hook_registry(module)
        if registry is not None and registry.get_hook(FBC_LEADER_HOOK) is not None:
            return registry
    raise ValueError("the step cache is not enabled on this transformer")
