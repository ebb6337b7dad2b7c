"""SkyReels-V1 video generation: request, stages, one-process pipeline, tiny preset."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from skyreels import cuda_free_imports

cuda_free_imports.install()  # before anything imports diffusers (and through it torchao): see that module

# Names load on first use: `import skyreels.cli` (and so `skyreels --help`) must not pay for torch and
# diffusers before the arguments are parsed.
_HOMES = {
    "DEFAULT_NEGATIVE_PROMPT": "skyreels.request",
    "GenerationCancelled": "skyreels.progress",
    "GenerationRequest": "skyreels.request",
    "GenerationResult": "skyreels.result",
    "LocalPipeline": "skyreels.pipeline",
    "StepProgress": "skyreels.progress",
    "Task": "skyreels.request",
    "VideoGenerator": "skyreels.pipeline",
    "make_tiny_model": "skyreels.tiny",
}

if TYPE_CHECKING:
    from skyreels.pipeline import LocalPipeline, VideoGenerator
    from skyreels.progress import GenerationCancelled, StepProgress
    from skyreels.request import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, Task
    from skyreels.result import GenerationResult
    from skyreels.tiny import make_tiny_model

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'skyreels' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
