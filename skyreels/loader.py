"""Where stages come from: the one place that turns a model source into stage objects.

Weights (`tiny`, a local directory, a Hub id) load through each stage's from_pretrained; `random-full` builds the
real architecture with random weights on the device; `sim` gives stand-ins that take the time the real stages
take on GPUs (skyreels.sim). LocalPipeline, the gang's ranks and the Serve stage deployments all load here.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import torch
from diffusers import HunyuanVideoTransformer3DModel
from torch import nn
from transformers import AutoTokenizer

from skyreels import random_full
from skyreels.models import TINY, ModelPaths, ModelSettings, resolve_model, transformer_config_path
from skyreels.optimize.apply import prepare_weights
from skyreels.optimize.config import OptimizeConfig
from skyreels.preflight import architecture
from skyreels.request import Task
from skyreels.sim.source import SimOptions
from skyreels.sim.stages import SimDenoiseStage, SimTextEncoderStage, SimVaeStage
from skyreels.sim.swap import SimWeightBank
from skyreels.stages.denoise import DenoiseStage
from skyreels.stages.text import PromptEncoder, TextEncoderStage
from skyreels.stages.vae import VaeStage
from skyreels.weights import StreamedWeights, TransformerBank, WeightBank


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
    def transformer_config(self) -> dict:
        """The DiT's config (config.json's entries), read without loading its weights."""

    def attention_heads(self) -> int:
        """The DiT's heads, which the gang's Ulysses degree must divide."""
        return self.transformer_config()["num_attention_heads"]

    @abstractmethod
    def weight_bank(self, stage: DenoiseStage, served: Mapping[Task, StageLoader]) -> WeightBank:
        """The bank of the `served` models' weights over `stage`, which this loader made (holding this task's)."""


@dataclass(frozen=True)
class TransformerLoader(StageLoader, ABC):
    """A source with real transformer weights, which a gang serving several models swaps (skyreels.weights)."""

    @abstractmethod
    def host_transformer(self) -> nn.Module:
        """The transformer in host memory, in the loader's dtype, not yet quantised."""

    def weight_bank(self, stage: DenoiseStage, served: Mapping[Task, StageLoader]) -> TransformerBank:
        others = {task: loader for task, loader in served.items() if task is not self.task}
        if not all(isinstance(loader, TransformerLoader) for loader in others.values()):
            raise ValueError(f"a gang swaps weights between models of one kind, not {self.source!r} and "
                             f"{[loader.source for loader in others.values()]}")
        return TransformerBank.load(stage.transformer, self.task,
                                    {task: loader.swappable_transformer() for task, loader in others.items()})

    def swappable_transformer(self) -> nn.Module:
        """The host transformer with its weights in the form a transformer prepared for the device holds them."""
        transformer = self.host_transformer()
        prepare_weights(transformer, self.optimize, torch.device(self.device))
        return transformer


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
    if source == architecture.FAKE_FULL:
        return FakeFullLoader(**common)
    return WeightsLoader(**common)


def served_denoisers(loaders: Mapping[Task, StageLoader], batch_cfg: bool = True
                     ) -> tuple[dict[Task, DenoiseStage], WeightBank]:
    """The denoise stage of each served task on a gang rank, and the bank that puts a task's weights in place.

    One stage for every task, whose weights the bank swaps (the first task's to begin with); with block offload a
    stage per task, each streaming its blocks from its own host weights (StreamedWeights).
    """
    first = next(iter(loaders.values()))
    if first.optimize.block_offload:
        return {task: loader.denoiser(batch_cfg) for task, loader in loaders.items()}, StreamedWeights(tuple(loaders))
    stage = first.denoiser(batch_cfg)
    return dict.fromkeys(loaders, stage), first.weight_bank(stage, loaders)


@dataclass(frozen=True)
class WeightsLoader(TransformerLoader):
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

    def host_transformer(self) -> nn.Module:
        return HunyuanVideoTransformer3DModel.from_pretrained(self.paths.transformer, torch_dtype=self.dtype)

    def vae(self, device: str | None = None) -> VaeStage:
        return VaeStage.from_pretrained(self.paths.component("vae"), device=device or self.device, dtype=self.dtype)

    def transformer_config(self) -> dict:
        return json.loads(transformer_config_path(self.source, self.task, self.settings).read_text())


@dataclass(frozen=True)
class RandomFullLoader(TransformerLoader):
    """The real architecture with random weights made on the device (host copies: on the CPU): for benchmarks
    only."""

    def text(self) -> PromptEncoder:
        return random_full.RandomTextEncoderStage(self.device, self.dtype)

    def denoiser(self, batch_cfg: bool = True) -> DenoiseStage:
        transformer = random_full.random_transformer(self.task, self.device, self.dtype)
        return DenoiseStage.prepared(transformer, random_full.scheduler(), self.device, self.optimize,
                                     batch_cfg=batch_cfg)

    def host_transformer(self) -> nn.Module:
        return random_full.random_transformer(self.task, "cpu", self.dtype)

    def vae(self, device: str | None = None) -> VaeStage:
        return VaeStage(random_full.random_vae(device or self.device, self.dtype))

    def transformer_config(self) -> dict:
        return random_full.transformer_config(self.task)


@dataclass(frozen=True)
class FakeFullLoader(TransformerLoader):
    """The real architectures as fake tensors (skyreels.preflight.architecture), loaded the way WeightsLoader
    loads weights: into host memory first, then prepared and placed by the stages' own code. Only
    `skyreels preflight` can use it (fake CUDA)."""

    @cached_property
    def tokenizers(self) -> ModelPaths:
        return resolve_model(TINY, self.task, self.settings)

    def text(self) -> TextEncoderStage:
        return TextEncoderStage.prepared(
            llama=architecture.fake_llama(self.dtype),
            llama_tokenizer=AutoTokenizer.from_pretrained(self.tokenizers.component("tokenizer")),
            clip=architecture.fake_clip(self.dtype),
            clip_tokenizer=AutoTokenizer.from_pretrained(self.tokenizers.component("tokenizer_2")),
            device=self.device, optimize=self.optimize)

    def denoiser(self, batch_cfg: bool = True) -> DenoiseStage:
        return DenoiseStage.prepared(self.host_transformer(), random_full.scheduler(), self.device, self.optimize,
                                     batch_cfg=batch_cfg)

    def host_transformer(self) -> nn.Module:
        return architecture.fake_transformer(self.task, self.dtype)

    def vae(self, device: str | None = None) -> VaeStage:
        return VaeStage(architecture.fake_vae(self.dtype).to(device or self.device))

    def transformer_config(self) -> dict:
        return random_full.transformer_config(self.task)


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

    def weight_bank(self, stage: SimDenoiseStage, served: Mapping[Task, StageLoader]) -> SimWeightBank:
        return SimWeightBank(stage, tuple(served), self.options)

    def transformer_config(self) -> dict:
        return random_full.transformer_config(self.task)
