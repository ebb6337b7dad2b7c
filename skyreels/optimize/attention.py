"""Attention kernels: PyTorch SDPA (any of its kernels, or cuDNN's), FlashAttention 2/3 or SageAttention."""

from __future__ import annotations

import logging

import torch
from diffusers.utils import is_flash_attn_3_available, is_flash_attn_available, is_sageattention_available
from torch import nn

logger = logging.getLogger(__name__)

AVAILABLE = {
    "native": lambda: True,
    "_native_cudnn": lambda: torch.cuda.is_available() and torch.backends.cudnn.is_available(),
    "flash": is_flash_attn_available,
    "_flash_3": is_flash_attn_3_available,
    "sage": is_sageattention_available,
}


def usable_backend(requested: str) -> str:
    """The requested backend, or native (SDPA) with a log line when its package is missing."""
    if requested not in AVAILABLE:
        raise ValueError(f"attention backend must be one of {sorted(AVAILABLE)}, got {requested!r}")
    if AVAILABLE[requested]():
        return requested
    logger.warning("attention backend %r is not available here; using native (PyTorch SDPA)", requested)
    return "native"


def set_backend(transformer: nn.Module, backend: str) -> None:
    """Routes every attention processor of `transformer` (the Ulysses one included) to `backend`."""
    transformer.set_attention_backend(backend)
