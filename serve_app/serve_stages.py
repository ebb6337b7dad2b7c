"""The generation recipe's stages behind Serve handles, for one job (skyreels.recipe.Stages)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from deployments.errors import GangUnavailable
from deployments.tracing import call_span
from serve_app.failures import StageTimeout
from skyreels.artifacts import StoredVideo, VideoTarget
from skyreels.models import SERVED_MODEL_IDS
from skyreels.progress import StepProgress
from skyreels.recipe import Decoded, Denoised
from skyreels.request import GenerationRequest, Task

logger = logging.getLogger(__name__)

# A broken gang is replaced by Serve within its health-check period plus a model load.
GANG_RETRIES, GANG_RETRY_S = 40, 3.0

T = TypeVar("T")


class ServeStages:
    """The recipe's stages behind Serve handles, for one job. `decoder` is the Vae or the Denoiser deployment:
    both decode latents to the job's stored video (`decode_to_storage`). With `gang_decodes_to` (the app decodes
    on the gang), the gang decodes at the end of the job's denoise call, and `decode` is called only for a run
    that resumes at the decode."""

    def __init__(self, job_id: str, text_encoder: Any, denoiser: Any, vae: Any, decoder: Any,
                 timeout_s: float, gang_turn: Callable[[], Awaitable[None]] | None = None,
                 gang_decodes_to: VideoTarget | None = None) -> None:
        self.job_id = job_id
        self.text_encoder, self.denoiser, self.vae, self.decoder = text_encoder, denoiser, vae, decoder
        self.gang_decodes_to = gang_decodes_to
        self.timeout_s = timeout_s  # the DiT's own watchdog is the gang's (deployments.denoiser)
        self.gang_turn = gang_turn  # awaited before the job goes to the gang (serve_app.preemption)

    async def encode_text(self, prompt: str, negative_prompt: str | None) -> Any:
        with call_span("text_encode") as trace:
            return await self._within(self.text_encoder.encode.remote(prompt, negative_prompt, trace=trace),
                                      "text encoding")

    async def encode_image(self, request: GenerationRequest) -> Any:
        with call_span("image_encode") as trace:
            return await self._within(self.vae.encode_image.remote(
                request.image, request.height, request.width, request.seed, trace=trace), "image encoding")

    async def denoise(self, task: Task, conditioning: Any, params: Any, image: Any, checkpoint: Any = None
                      ) -> AsyncIterator[StepProgress | Denoised | Decoded[StoredVideo]]:
        """The gang's stream; waits for the job's turn, and out a gang that is being replaced (nothing ran on it
        yet). `checkpoint` travels to the gang: it resumes from the step held there, and stops and saves its step
        when the runner asks there (LatentCheckpoint.request_stop)."""
        if self.gang_turn is not None:
            await self.gang_turn()
        for attempt in range(GANG_RETRIES + 1):
            answered = False
            try:
                # routed to a gang that holds the task's model, when one is free (Serve's model multiplexing)
                gang = self.denoiser.options(multiplexed_model_id=SERVED_MODEL_IDS[task])
                with call_span("denoise") as trace:
                    async for event in gang.denoise.remote(task, conditioning, params, image, checkpoint,
                                                           decode_to=self.gang_decodes_to, trace=trace):
                        answered = True
                        yield event
                return
            except GangUnavailable:
                # broken between the job's denoising and its decode: the run ends (and runs again, from the
                # latents checkpointed by then); broken before it began: another gang is awaited
                if answered or attempt == GANG_RETRIES:
                    raise
                logger.warning("job %s: the DiT gang is being replaced; retrying in %.0f s", self.job_id, GANG_RETRY_S)
                await asyncio.sleep(GANG_RETRY_S)

    async def decode(self, latents: Any, request: GenerationRequest) -> StoredVideo:
        decoder = self.decoder
        if self.gang_decodes_to:  # to a gang that holds the job's model, as the job's denoising went
            decoder = decoder.options(multiplexed_model_id=SERVED_MODEL_IDS[request.task])
        with call_span("decode") as trace:
            return await self._within(
                decoder.decode_to_storage.remote(self.job_id, latents, request.fps, trace=trace), "decoding")

    async def _within(self, call: Awaitable[T], what: str) -> T:
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except asyncio.TimeoutError as error:
            raise StageTimeout(f"{what} did not answer within {self.timeout_s:.0f} s") from error
