"""Where stages come from: the one place that turns a model source into stage objects.

Weights (`tiny`, a local directory, a Hub id) load through each stage's from_pretrained; `random-full` builds the
real architecture with random weights on the device; `sim` gives stand-ins that take the time the real stages
take on GPUs (skyreels.sim). LocalPipeline, the gang's ranks and the Serve stage deployments all load here.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property

import torch

from skyreels import random_full
from skyreels.models import ModelPaths, ModelSettings, resolve_model
from skyreels.optimize.config import OptimizeConfig
from skyreels.request import Task
from skyreels.sim.source import SimOptions
from skyreels.sim.stages import SimDenoiseStage, SimTextEncoderStage, SimVaeStage
from skyreels.stages.denoise import DenoiseStage
from skyreels.stages.text import PromptEncoder, TextEncoderStage
from skyreels.stages.vae import VaeStage


@dataclass(frozen=True)
class StageLoader(ABC):
    """The stages of one model source and task, on one device."""

    source: str
    task: Task
    device: str
    dtype: torch.dtype
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    settings: ModelSettings = field(default_factory=ModelSettings)

    @abstractmethod
    def text(self) -> PromptEncoder: ...

    @abstractmethod
    def denoiser(self, batch_cfg: bool = True) -> DenoiseStage:
        """batch_cfg: both CFG branches in one forward (faster) or one after the other (less memory)."""

    @abstractmethod
    def vae(self, device: str | None = None) -> VaeStage:
        """On `device` when given (model-level offload keeps it in host memory), else the loader's."""

    @abstractmethod
    def attention_heads(self) -> int:
        """The DiT's heads, which the gang's Ulysses degree must divide."""


def stage_loader(source: str, task: Task | str, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, optimize: OptimizeConfig | None = None,
                 settings: ModelSettings | None = None) -> StageLoader:
    task = Task(task)
    common = dict(source=source, task=task, device=str(device), dtype=dtype,
                  optimize=optimize or OptimizeConfig(), settings=settings or ModelSettings())
    sim = SimOptions.parse(source)
    if sim is not None:
        return SimLoader(**common, options=sim)
    if source == random_full.RANDOM_FULL:
        return RandomFullLoader(**common)
    return WeightsLoader(**common)


@dataclass(frozen=True)
class WeightsLoader(StageLoader):
    @cached_property
    def paths(self) -> ModelPaths:
        return resolve_model(self.source, self.task, self.settings)

    def text(self) -> TextEncoderStage:
        return TextEncoderStage.from_pretrained(self.paths.base, device=self.device, dtype=self.dtype,
                                                optimize=self.optimize)

    def denoiser(self, batch_cfg: bool = True) -> DenoiseStage:
        return DenoiseStage.from_pretrained(self.paths.transformer, self.paths.component("scheduler"),
                                            device=self.device, dtype=self.dtype, batch_cfg=batch_cfg,
                                            optimize=self.optimize)

    def vae(self, device: str | None = None) -> VaeStage:
        return VaeStage.from_pretrained(self.paths.component("vae"), device=device or self.device, dtype=self.dtype)

    def attention_heads(self) -> int:
        return json.loads((self.paths.transformer / "config.json").read_text())["num_attention_heads"]


@dataclass(frozen=True)
class RandomFullLoader(StageLoader):
    """The real architecture with random weights made on the device: for benchmarks only."""

    def text(self) -> PromptEncoder:
        return random_full.RandomTextEncoderStage(self.device, self.dtype)

    def denoiser(self, batch_cfg: bool = True) -> DenoiseStage:
        transformer = random_full.random_transformer(self.task, self.device, self.dtype)
        return DenoiseStage.prepared(transformer, random_full.scheduler(), self.device, self.optimize,
                                     batch_cfg=batch_cfg)

    def vae(self, device: str | None = None) -> VaeStage:
        return VaeStage(random_full.random_vae(device or self.device, self.dtype))

    def attention_heads(self) -> int:
        return random_full.TRANSFORMER_CONFIG["num_attention_heads"]


@dataclass(frozen=True)
class SimLoader(StageLoader):
    """Stand-ins for the real model's stages: its shapes, its heads, its GPU timings."""

    options: SimOptions = field(default_factory=SimOptions)

    def text(self) -> SimTextEncoderStage:
        return SimTextEncoderStage(self.options, self.dtype)

    def denoiser(self, batch_cfg: bool = True) -> SimDenoiseStage:
        return SimDenoiseStage(self.task, self.options)

    def vae(self, device: str | None = None) -> SimVaeStage:
        return SimVaeStage(self.options)

    def attention_heads(self) -> int:
        return random_full.TRANSFORMER_CONFIG["num_attention_heads"]
