"""Repeated calls of one module on inputs of one shape, run once and replayed.

The VAE's tiled decode calls its decoder on about a hundred tiles of a handful of shapes, one after another; on
fake tensors each call costs seconds and tells nothing new. The first call of each input shape runs; a later one
replays it: the allocation tracker sees the same transient peak above what was live when it began, and the caller
gets an output of the same shape, dtype and device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from skyreels.preflight.memory import AllocationTracker, device_key


@dataclass(frozen=True)
class _Call:
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    transient: int  # bytes above the live total at entry, at the call's peak, besides its output


def active_tracker() -> AllocationTracker:
    for mode in _get_current_dispatch_mode_stack():
        if isinstance(mode, AllocationTracker):
            return mode
    raise RuntimeError("no allocation tracker is active (skyreels.preflight.fake_cuda)")


def replay_by_shape(module: nn.Module) -> None:
    """Makes `module`'s forward (one tensor in, one tensor out) run once per input shape and replay after."""
    forward = module.forward
    seen: dict[tuple, _Call] = {}

    @functools.wraps(forward)
    def replaying(sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        key = (tuple(sample.shape), sample.dtype, sample.device, args, tuple(sorted(kwargs.items())))
        tracker = active_tracker()
        device = device_key(sample.device)
        if key in seen:
            call = seen[key]
            tracker.usage[device].add(call.transient)
            tracker.usage[device].add(-call.transient)
            return torch.empty(call.shape, dtype=call.dtype, device=call.device)
        usage = tracker.usage[device]
        live, peak = usage.live, usage.peak
        usage.peak = live
        out = forward(sample, *args, **kwargs)
        output_bytes = usage.live - live
        seen[key] = _Call(tuple(out.shape), out.dtype, out.device, max(0, usage.peak - live - output_bytes))
        usage.peak = max(peak, usage.peak)
        return out

    module.forward = replaying
