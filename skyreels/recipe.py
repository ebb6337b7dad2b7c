"""The generation recipe, stated once: the order of the stages, the CFG rule, timings and progress.

`LocalPipeline` (stages in this process), the local gang (stages on rank processes) and the Serve job
runner (stages behind Serve handles) each supply a `Stages`; `generate` runs the recipe over them.
The core is async because Serve's stages are; `run_sync` drives it from plain code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Coroutine
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch

from skyreels.progress import Phase, Progress, ProgressCallback, StepProgress, StepState
from skyreels.request import GenerationRequest, Task
from skyreels.stages.conditioning import Conditioning, ImageCondition
from skyreels.stages.denoise import DenoiseParams
from skyreels.timing import Stopwatch, timed

Output = TypeVar("Output")
Result = TypeVar("Result")


@dataclass(frozen=True)
class DenoiseFigures:
    """What a gang rank counted while it denoised one video, for whoever records metrics (zeros: not counted)."""

    swap_s: float = 0.0  # putting the task's transformer weights in place
    lora_s: float = 0.0  # loading the request's LoRA adapters that were not loaded yet
    adapter_hits: int = 0  # adapters of the request already loaded (the adapter cache's hits)
    adapter_loads: int = 0  # adapters loaded for it (misses)
    forwards: int = 0  # DiT forwards the step cache decided on (each CFG branch counts; 0 without the cache)
    forwards_skipped: int = 0  # of those, the ones it skipped


@dataclass(frozen=True)
class Denoised:
    """The last item of a denoise stream: the denoised latents (1, C, T', h, w), float32, on the CPU."""

    latents: torch.Tensor
    weights_s: float = 0.0  # of the stream's time, spent putting the weights in place (model swap, LoRA loads)
    figures: DenoiseFigures = field(default_factory=DenoiseFigures)


@dataclass(frozen=True)
class Decoded(Generic[Output]):
    """After Denoised, from a denoise stage that also decodes what it denoised, in the same call (a gang that
    decodes: no second trip through Serve's router, where the decode could wait behind other jobs' denoising)."""

    output: Output
    seconds: float  # the decode's, taken out of the stream's


class Checkpoint(Protocol):
    """Where the denoised latents of a run are kept until the video is made, and those of a denoising paused
    between two steps (skyreels.artifacts.LatentCheckpoint)."""

    def load(self) -> torch.Tensor | None: ...

    def save(self, latents: torch.Tensor) -> None: ...

    def load_steps(self) -> StepState | None: ...

    def save_steps(self, state: StepState) -> None: ...


class Stages(Protocol[Output]):
    """What the recipe asks of wherever the stages run. Each call may suspend (a Serve handle, a rank)."""

    async def encode_text(self, prompt: str, negative_prompt: str | None) -> Conditioning: ...

    async def encode_image(self, request: GenerationRequest) -> ImageCondition: ...

    def denoise(self, task: Task, conditioning: Conditioning, params: DenoiseParams, image: ImageCondition | None,
                checkpoint: Checkpoint | None = None) -> AsyncIterator[StepProgress | Denoised | Decoded[Output]]:
        """StepProgress after every step, then Denoised, then Decoded where these stages decode on the denoise
        stage (then `decode` is called only for a run that resumes at the decode). Closing the stream early stops
        the steps. With a checkpoint, the steps go on from the step it holds (if any), and a stream closed early
        saves the step the steps stopped at (`save_steps`, before the stage takes other work)."""
        ...

    async def decode(self, latents: torch.Tensor, request: GenerationRequest) -> Output: ...


@dataclass
class Generated(Generic[Output]):
    output: Output  # what the decode stage made: frames, or a stored video
    latents: torch.Tensor
    # seconds per stage; "weights" (a gang swapping to another model's weights) is taken out of "denoise"
    timings: dict[str, float] = field(default_factory=dict)
    resumed: bool = False  # the latents came from the checkpoint: no stage before the decode ran


async def generate(request: GenerationRequest, stages: Stages[Output], on_progress: ProgressCallback | None = None,
                   checkpoint: Checkpoint | None = None) -> Generated[Output]:
    """One video: text -> (image) -> denoise -> decode. The request's seed must be resolved (`with_seed`).

    With a checkpoint the latents are saved before the decode, and a run that finds them saved starts at
    the decode; a run stopped while denoising saves its last step there, and the next run goes on from it (a
    preempted job). Cancelling the task, or an `on_progress` that raises, stops the run between two steps.
    """
    report = on_progress or (lambda _: None)
    timings: dict[str, float] = {}
    latents = saved = await asyncio.to_thread(checkpoint.load) if checkpoint is not None else None
    decoded = None
    if saved is None:
        latents, decoded = await _denoised(request, stages, report, timings, checkpoint)
    else:
        report(Progress.entering(Phase.DECODING, request.num_inference_steps))
    if decoded is not None:
        timings["decode"] = decoded.seconds
        return Generated(output=decoded.output, latents=latents, timings=timings)
    with timed(timings, "decode"):
        output = await stages.decode(latents, request)
    return Generated(output=output, latents=latents, timings=timings, resumed=saved is not None)


async def _denoised(request: GenerationRequest, stages: Stages, report: ProgressCallback,
                    timings: dict[str, float], checkpoint: Checkpoint | None
                    ) -> tuple[torch.Tensor, Decoded | None]:
    """The denoised latents (kept in the checkpoint as soon as they are in, before any decode), and the video
    where the denoise stage decoded them too."""
    params = DenoiseParams.from_request(request)

    report(Progress.entering(Phase.ENCODING_TEXT, params.num_inference_steps))
    with timed(timings, "text_encode"):
        # true CFG (guidance > 1) runs a negative branch; without it the negative prompt is not even encoded
        negative = request.negative_prompt if request.uses_true_cfg else None
        conditioning = await stages.encode_text(request.prompt, negative)

    image = None
    if request.image is not None:
        report(Progress.entering(Phase.ENCODING_IMAGE, params.num_inference_steps))
        with timed(timings, "image_encode"):
            image = await stages.encode_image(request)

    report(Progress.entering(Phase.DENOISING, params.num_inference_steps))
    denoised = decoded = None
    stopwatch = Stopwatch()
    async with aclosing(stages.denoise(request.task, conditioning, params, image, checkpoint)) as events:
        async for event in events:
            if isinstance(event, StepProgress):
                report(Progress.denoised(event))
            elif isinstance(event, Denoised):
                denoised = event
                # the weights' time (a model swap, LoRA loads) is taken out of the denoising's
                timings["denoise"] = stopwatch.elapsed() - event.weights_s
                if event.weights_s:
                    timings["weights"] = event.weights_s
                if checkpoint is not None:
                    with timed(timings, "checkpoint"):
                        await asyncio.to_thread(checkpoint.save, event.latents)
                report(Progress.entering(Phase.DECODING, params.num_inference_steps))
            else:
                decoded = event
    if denoised is None:
        raise RuntimeError("the denoise stage ended without latents")
    return denoised.latents, decoded


def run_sync(coroutine: Coroutine[Any, Any, Result]) -> Result:
    """Runs `coroutine` to its end from plain code, also where this thread already runs an event loop
    (a notebook): then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
