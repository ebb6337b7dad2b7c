"""What a caller asks for: one validated, immutable generation request."""

from __future__ import annotations

import secrets
from enum import Enum
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skyreels.lora.spec import MAX_LORAS, LoraSpec

DEFAULT_NEGATIVE_PROMPT = (
    "Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, "
    "bad hands, bad teeth, bad eyes, bad limbs, distortion"
)
# SkyReels-V1 was fine-tuned with this prefix on every caption; prompts without it drift.
PROMPT_PREFIX = "FPS-24, "

SIZE_MULTIPLE = 16
MIN_SIZE, MAX_SIZE = 64, 1280
MAX_FRAMES = 289
MAX_STEPS = 100
MAX_SEED = 2**32 - 1


class Task(str, Enum):
    T2V = "t2v"
    I2V = "i2v"


class GenerationRequest(BaseModel):
    """One video to generate. Frozen: stages may share it without copying."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

    task: Task = Field(Task.T2V, description="t2v (text only) or i2v (image + text).")
    prompt: str = Field(..., min_length=1, max_length=4000, description="What the video shows.")
    negative_prompt: str = Field(DEFAULT_NEGATIVE_PROMPT, max_length=4000,
                                 description="What the video should not show (the CFG negative branch).")
    height: int = Field(544, description=f"Pixels, a multiple of {SIZE_MULTIPLE} in [{MIN_SIZE}, {MAX_SIZE}].")
    width: int = Field(960, description=f"Pixels, a multiple of {SIZE_MULTIPLE} in [{MIN_SIZE}, {MAX_SIZE}].")
    num_frames: int = Field(97, description=f"4k+1 frames, from 1 to {MAX_FRAMES}.")
    num_inference_steps: int = Field(30, ge=1, le=MAX_STEPS, description=f"Denoising steps, 1 to {MAX_STEPS}.")
    guidance_scale: float = Field(6.0, ge=1.0, le=20.0, description="True CFG scale; 1.0 turns CFG off.")
    embedded_guidance_scale: float = Field(1.0, ge=1.0, le=20.0, description="Distilled guidance input.")
    seed: int | None = Field(None, description=f"0..{MAX_SEED}; None or -1 picks one at random.")
    fps: int = Field(24, ge=1, le=60, description="Frame rate of the written video.")
    image: Image.Image | None = Field(None, description="First frame to animate; required for i2v only.")
    loras: list[LoraSpec] = Field(default_factory=list, max_length=MAX_LORAS, description=(
        f"LoRA adapters of the DiT for this video, up to {MAX_LORAS}: each a source (file, directory, URL or Hub id) "
        "and a scale."))

    @field_validator("prompt")
    @classmethod
    def _prefix_prompt(cls, prompt: str) -> str:
        prompt = prompt.strip()
        if not prompt:
            raise ValueError("prompt must not be blank")
        return prompt if prompt.startswith(PROMPT_PREFIX.strip()) else PROMPT_PREFIX + prompt

    @field_validator("height", "width")
    @classmethod
    def _check_size(cls, value: int, info: Any) -> int:
        if not MIN_SIZE <= value <= MAX_SIZE or value % SIZE_MULTIPLE:
            raise ValueError(
                f"{info.field_name} must be a multiple of {SIZE_MULTIPLE} between {MIN_SIZE} and {MAX_SIZE}, "
                f"got {value}"
            )
        return value

    @field_validator("num_frames")
    @classmethod
    def _check_frames(cls, value: int) -> int:
        if not 1 <= value <= MAX_FRAMES or (value - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1 between 1 and {MAX_FRAMES} (e.g. 97, 129), got {value}")
        return value

    @field_validator("seed")
    @classmethod
    def _check_seed(cls, value: int | None) -> int | None:
        if value is None or value == -1:
            return None
        if not 0 <= value <= MAX_SEED:
            raise ValueError(f"seed must be -1 (random) or between 0 and {MAX_SEED}, got {value}")
        return value

    @field_validator("loras")
    @classmethod
    def _check_loras_differ(cls, loras: list[LoraSpec]) -> list[LoraSpec]:
        sources = [lora.source for lora in loras]
        if len(set(sources)) < len(sources):
            raise ValueError(f"each LoRA once (one scale each), got the sources {sources}")
        return loras

    @model_validator(mode="after")
    def _check_image_matches_task(self) -> GenerationRequest:
        if self.task is Task.I2V and self.image is None:
            raise ValueError("task i2v requires an image (the first frame to animate)")
        if self.task is Task.T2V and self.image is not None:
            raise ValueError("task t2v takes no image; use task i2v to animate an image")
        return self

    @property
    def uses_true_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def with_seed(self) -> GenerationRequest:
        """The same request with a concrete seed (drawn at random when none was given)."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})
