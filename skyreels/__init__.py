"""SkyReels-V1 video generation: request, stages, one-process pipeline, tiny preset."""

from skyreels.pipeline import LocalPipeline, VideoGenerator
from skyreels.result import GenerationResult
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
    "VideoGenerator",
    "make_tiny_model",
]
