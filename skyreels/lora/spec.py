"""What a request asks of LoRA adapters: which file, at which scale. Light: no torch (requests are built before
the models load, and by the CLI before its arguments are parsed)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_LORAS = 4  # adapters in one request
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
# Negative scales subtract an adapter's direction (slider LoRAs); past 4 an adapter trained at 1 gives noise.
MIN_SCALE, MAX_SCALE = -4.0, 4.0


class AdapterError(ValueError):
    """A LoRA adapter that cannot be used: not found, not a LoRA, made for another model, or not usable with the
    pipeline's optimisations. The message says which and why."""


class LoraSpec(BaseModel):
    """One LoRA adapter of a request. A plain string is taken as the source at scale 1."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(..., min_length=1, description=(
        "A local .safetensors file, a directory holding one (or pytorch_lora_weights.safetensors), an fsspec URL "
        "(s3://, gs://, https://, ...) or a Hugging Face Hub id (owner/name)."))
    scale: float = Field(1.0, ge=MIN_SCALE, le=MAX_SCALE, description=(
        f"Strength, as diffusers' set_adapters weight: 1 as trained, 0 off, negative subtracts "
        f"({MIN_SCALE:g} to {MAX_SCALE:g})."))

    @model_validator(mode="before")
    @classmethod
    def _source_alone(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """SOURCE[:SCALE]. Sources hold colons (URLs), so only a last part that reads as a number is the scale."""
        source, _, tail = text.rpartition(":")
        try:
            scale = float(tail)
        except ValueError:  # no colon, or not a number after it: the colon belongs to the source
            return cls(source=text)
        return cls(source=source, scale=scale)
