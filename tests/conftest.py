"""Shared fixtures: the tiny preset, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skyreels import GenerationRequest, LocalPipeline, Task, make_tiny_model

# Small enough for 2 CPU cores, big enough for several latent frames and tokens.
TINY_SHAPE = dict(height=64, width=64, num_frames=9, num_inference_steps=4)


@pytest.fixture(scope="session")
def tiny_t2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "t2v", task="t2v")


@pytest.fixture(scope="session")
def tiny_i2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "i2v", task="i2v")


@pytest.fixture(scope="session")
def t2v_pipeline(tiny_t2v_dir: Path) -> LocalPipeline:
    return LocalPipeline.from_pretrained(tiny_t2v_dir, task=Task.T2V)


@pytest.fixture(scope="session")
def i2v_pipeline(tiny_i2v_dir: Path) -> LocalPipeline:
    return LocalPipeline.from_pretrained(tiny_i2v_dir, task=Task.I2V)


@pytest.fixture(scope="session")
def first_frame() -> Image.Image:
    """A deterministic picture with structure (gradients), not flat noise."""
    y, x = np.mgrid[0:80, 0:96]
    pixels = np.stack([x * 255 // 95, y * 255 // 79, (x + y) * 255 // 174], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def t2v_request() -> GenerationRequest:
    return GenerationRequest(prompt="a cat walks on the grass, realistic", seed=42, **TINY_SHAPE)


@pytest.fixture
def i2v_request(first_frame: Image.Image) -> GenerationRequest:
    return GenerationRequest(
        task=Task.I2V, prompt="the picture comes alive", image=first_frame, seed=7, **TINY_SHAPE
    )
