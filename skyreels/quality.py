"""How close one output is to another: PSNR, for frames (peak 255) or latents (peak: their range)."""

from __future__ import annotations

import numpy as np
import torch


def psnr_db(value: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; inf when the two are equal."""
    value, reference = (torch.as_tensor(x, dtype=torch.float64) for x in (value, reference))
    if value.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(value.shape)} vs {tuple(reference.shape)}")
    mse = float(((value - reference) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))
