"""What every stage deployment needs to know: which models, on which device, in which dtype."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.tracing import TracingConfig
from skyreels.loader import StageLoader, stage_loader
from skyreels.models import SERVED_MODEL_IDS, TINY, ServedModel
from skyreels.optimize import OptimizeConfig
from skyreels.request import Task


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(TINY, description="T2V model source: 'tiny', a directory or a Hub id.")
    i2v_model: str | None = Field(
        None, description="I2V model source; defaults to the tiny I2V preset when model is 'tiny', else off."
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where each stage runs its model.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights and activations.")
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig, description="Speed and memory options.")
    tracing: TracingConfig = Field(default_factory=TracingConfig, description="Where every process of the app "
                                   "sends its OpenTelemetry spans (one trace per job).")

    @field_validator("optimize")
    @classmethod
    def _no_model_offload(cls, optimize: OptimizeConfig) -> OptimizeConfig:
        if optimize.offload:
            raise ValueError("optimize.offload (model level) is for one process running every stage; each Serve "
                             "stage holds its own device: use optimize.block_offload for the DiT")
        return optimize

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def sources(self) -> dict[Task, str]:
        """The model source of every task the application serves."""
        i2v = self.i2v_model or (TINY if self.model == TINY else None)
        return {Task.T2V: self.model} | ({Task.I2V: i2v} if i2v else {})

    @property
    def served_models(self) -> list[ServedModel]:
        """The application's model registry."""
        return [ServedModel(SERVED_MODEL_IDS[task], task, source) for task, source in self.sources.items()]

    @property
    def base_loader(self) -> StageLoader:
        """Text encoders, tokenizers and VAE are the HunyuanVideo base, shared by both tasks."""
        task, source = next(iter(self.sources.items()))
        return stage_loader(source, task, self.device, self.torch_dtype, self.optimize)
