"""Attention kernels: PyTorch SDPA (its own pick, or forced to cuDNN), FlashAttention 2/3 or SageAttention."""

from __future__ import annotations

import logging
from typing import get_args

import torch
from torch import nn

from skyreels.optimize.config import AttentionBackend
from skyreels.upstream import check_attention_backend

logger = logging.getLogger(__name__)


def unusable_reason(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run on `device` here, or None when it can.

    Beyond the package being importable, diffusers wants minimum versions (SageAttention >= 2.1.1, which is
    not on PyPI: the 1.x there does not count); its own check says which.
    """
    if backend == "native":
        return None
    if device.type != "cuda":
        return f"it runs on CUDA GPUs only, not {device.type}"
    try:
        check_attention_backend(backend)
    except RuntimeError as error:
        return str(error)
    return None


def usable_backend(requested: str, device: torch.device) -> str:
    """The requested backend, or native (SDPA) with a log line saying why it cannot run."""
    if requested not in get_args(AttentionBackend):
        raise ValueError(f"attention backend must be one of {get_args(AttentionBackend)}, got {requested!r}")
    if (reason := unusable_reason(requested, device)) is None:
        return requested
    logger.warning("attention backend %r is not usable here (%s); using native (PyTorch SDPA)", requested, reason)
    return "native"


def set_backend(transformer: nn.Module, backend: str) -> None:
    """Routes every attention processor of `transformer` (the joint one included) to `backend`."""
    transformer.set_attention_backend(backend)
