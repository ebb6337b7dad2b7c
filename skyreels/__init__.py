"""SkyReels-V1 video generation: request, stages, one-process pipeline, tiny preset."""

from skyreels.pipeline import GenerationResult, LocalPipeline
from skyreels.progress import GenerationCancelled, StepProgress
from skyreels.request import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, Task
from skyreels.tiny import make_tiny_model

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "LocalPipeline",
    "StepProgress",
    "Task",
    "make_tiny_model",
]
