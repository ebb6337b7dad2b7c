"""What the API does, once for both of its faces: the HTTP routes and DeploymentHandle callers.

Every method raises ApiError (with the HTTP status and code it answers) or QueueFull for a request it refuses.
`owner` is the caller's API key id: a job of another owner is not found (404); None (no keys configured, or a
trusted in-cluster caller) reaches every job.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from PIL import Image

from serve_app.contract import ExtendParams, ModelList, RemixParams, Video, VideoDeleted, VideoList
from serve_app.eta import EtaEstimator
from serve_app.extension import EXTENDED_VIDEO, PREFIX_VIDEO, last_frame, read_clip, stitched_video
from serve_app.limits import PriorityPolicy, SubmitLimits
from serve_app.loras import AdapterList, AdapterRegistry
from serve_app.model_cards import model_card
from serve_app.priorities import Priority, estimated_gpu_seconds
from serve_app.requests import ApiError, InvalidRequest, UploadLimits, new_job, parse, parse_size, to_png
from serve_app.retention import expires_at
from serve_app.runner import JobRunner
from serve_app.schemas import SHARED_FIELDS, Job, JobStatus, VideoCreateParams
from serve_app.store import JobStore
from serve_app.webhooks import WebhookSender
from skyreels.artifacts import INPUT_IMAGE, THUMBNAIL, VIDEO, ArtifactStore
from skyreels.models import SERVED_MODEL_IDS, ServedModel
from skyreels.request import Task

Variant = Literal["video", "thumbnail"]
MEDIA_TYPES = {"video": "video/mp4", "thumbnail": "image/jpeg"}


class VideoService:
    def __init__(self, store: JobStore, artifacts: ArtifactStore, runner: JobRunner, served_models: list[ServedModel],
                 limits: SubmitLimits, webhooks: WebhookSender, ttl_s: float | None,
                 adapters: AdapterRegistry | None = None, priorities: PriorityPolicy | None = None) -> None:
        self.store, self.artifacts, self.runner, self.served_models = store, artifacts, runner, served_models
        self.limits, self.webhooks, self.ttl_s = limits, webhooks, ttl_s
        self.priorities = priorities or PriorityPolicy(Priority.BATCH, Priority.INTERACTIVE, {})
        self.adapters = adapters or AdapterRegistry(None, served_models)
        self.eta = EtaEstimator()

    def view(self, job: Job) -> Video:
        """The job as clients see it: with its live queue position and time left."""
        self.eta.learn(job)
        place = self.runner.queue_place(job)
        return Video.of(job, queue_position=place and place.position, eta_seconds=self.eta.estimate(
            job, time.time(), place), expires_at=expires_at(job, self.ttl_s))

    def models(self) -> ModelList:
        return ModelList(data=[model_card(model) for model in self.served_models])

    async def loras(self) -> AdapterList:
        return AdapterList(data=await asyncio.to_thread(self.adapters.cards))

    def job(self, job_id: str, owner: str | None = None) -> Job:
        job = self.store.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise ApiError(f"no video job {job_id!r}", 404, "not_found")
        return job

    async def submit(self, params: VideoCreateParams, image: Image.Image | None, prefix_video: bytes | None = None,
                     owner: str | None = None, **lineage: Any) -> Video:
        if owner is not None:
            self.limits.admit(owner, self.store.count_owned(owner, JobStatus.QUEUED, JobStatus.IN_PROGRESS))
        priority, weight = self.priorities.admit(owner, params.priority and Priority(params.priority))
        webhook_url = await self.webhooks.check(params.webhook_url)
        job, request = await asyncio.to_thread(new_job, params, image, self.served_models, self.adapters,
                                               owner=owner, webhook_url=webhook_url, **lineage)
        job = job.model_copy(update={"priority": priority, "share_weight": weight,
                                     "estimated_gpu_s": estimated_gpu_seconds(request)})
        if prefix_video is not None:
            await asyncio.to_thread(self.artifacts.put, job.id, PREFIX_VIDEO, prefix_video)
        try:
            job = await self.runner.submit(job, to_png(image) if image is not None else None)
        except BaseException:
            await asyncio.to_thread(self.artifacts.delete, job.id)
            raise
        return self.view(job)

    def list(self, limit: int = 20, after: str | None = None, owner: str | None = None) -> VideoList:
        try:
            jobs, has_more = self.store.list(limit=limit, after=after, owner=owner)
        except KeyError:
            raise ApiError(f"no video job {after!r} to list after: pass the last_id of a previous page", 404,
                           "not_found") from None
        return VideoList(data=[self.view(job) for job in jobs], has_more=has_more,
                         first_id=jobs[0].id if jobs else None, last_id=jobs[-1].id if jobs else None)

    async def content(self, job_id: str, variant: Variant = "video", owner: str | None = None) -> bytes:
        job = self._completed(job_id, owner)
        if variant == "video" and job.prefix_frames:
            return await asyncio.to_thread(stitched_video, self.artifacts, job_id, job.fps)
        return await asyncio.to_thread(self.artifacts.get, job_id, VIDEO if variant == "video" else THUMBNAIL)

    async def video_url(self, job_id: str, owner: str | None = None) -> str:
        """The artifact store's URL of the finished video (a path, s3://...)."""
        job = self._completed(job_id, owner)
        name = VIDEO
        if job.prefix_frames:
            await self.content(job_id)  # makes the stitched video
            name = EXTENDED_VIDEO
        return f"{self.artifacts.url.rstrip('/')}/{job_id}/{name}"

    async def cancel(self, job_id: str, owner: str | None = None) -> Video:
        job = self.job(job_id, owner)
        if job.status.is_terminal:
            raise ApiError(f"job {job_id} is already {job.status.value}", 409, "already_finished")
        return self.view(await self.runner.cancel(job_id))

    async def delete(self, job_id: str, owner: str | None = None) -> VideoDeleted:
        if not self.job(job_id, owner).status.is_terminal:
            await self.runner.cancel(job_id)
        self.store.delete(job_id)
        await asyncio.to_thread(self.artifacts.delete, job_id)
        return VideoDeleted(id=job_id)

    async def remix(self, job_id: str, remix: RemixParams, owner: str | None = None) -> Video:
        """The source job again with a new prompt: same model, seed and settings (and prefix, for an extension)."""
        source = self.job(job_id, owner)
        image = None
        if source.has_input_reference:
            image = Image.open(io.BytesIO(await asyncio.to_thread(self.artifacts.get, job_id, INPUT_IMAGE)))
        prefix, lineage = None, {}
        if source.prefix_frames:
            prefix = await asyncio.to_thread(self.artifacts.get, job_id, PREFIX_VIDEO)
            lineage = {"extended_from_video_id": source.extended_from_video_id, "prefix_frames": source.prefix_frames}
        params = _params_of(source, prompt=remix.prompt)
        return await self.submit(params, image, prefix, owner, remixed_from_video_id=job_id, **lineage)

    async def extend(self, extension: ExtendParams, owner: str | None = None) -> Video:
        """An I2V continuation from the source's last frame, on the source's seed and settings."""
        if extension.video is None:
            raise InvalidRequest('video: give a completed video as {"id": "video_..."}, or upload an mp4 or webm '
                                 "file as `video` (multipart)")
        source = self._completed(extension.video.id, owner)
        video = await self.content(source.id)
        params = _params_of(source, prompt=extension.prompt, model=self._i2v_model(),
                            num_frames=extension.num_frames, seconds=extension.seconds)
        image = await asyncio.to_thread(last_frame, video)
        return await self.submit(params, image, video, owner, extended_from_video_id=source.id,
                                 prefix_frames=self.view(source).total_frames)

    async def extend_clip(self, extension: ExtendParams, clip: bytes, limits: UploadLimits,
                          owner: str | None = None) -> Video:
        """An I2V continuation from an uploaded clip's last frame, at the clip's frame rate, the clip resized to
        about the I2V model's default size (a new seed unless given)."""
        model = self._i2v_model()
        width, height = parse_size(model_card(self._served(model)).defaults.size)
        read = await asyncio.to_thread(read_clip, clip, limits, width * height)
        params = parse(VideoCreateParams, {"model": model, "prompt": extension.prompt, "size": read.size,
                                           "fps": read.fps, "num_frames": extension.num_frames,
                                           "seconds": extension.seconds})
        return await self.submit(params, read.last_frame, read.mp4, owner, prefix_frames=read.frames)

    def _served(self, model_id: str) -> ServedModel:
        return next(model for model in self.served_models if model.id == model_id)

    async def follow(self, job_id: str, keepalive_s: float | None = None,
                     owner: str | None = None) -> AsyncIterator[Video | None]:
        """The job now and after every change until it ends; None after `keepalive_s` without one."""
        async with self.runner.events.follow(job_id) as updates:
            job = self.job(job_id, owner)
            while True:
                yield self.view(job)
                if job.status.is_terminal:
                    return
                try:
                    job = await asyncio.wait_for(updates.get(), keepalive_s)
                except asyncio.TimeoutError:
                    yield None
                    job = self.job(job_id)

    def _completed(self, job_id: str, owner: str | None = None) -> Job:
        job = self.job(job_id, owner)
        if job.status is not JobStatus.COMPLETED:
            raise ApiError(f"job {job_id} is {job.status.value}; its video exists once completed", 409, "not_ready")
        return job

    def _i2v_model(self) -> str:
        i2v = SERVED_MODEL_IDS[Task.I2V]
        if i2v not in {model.id for model in self.served_models}:
            raise InvalidRequest(f"extending a video needs the image-to-video model {i2v}, which this server "
                                 "does not serve")
        return i2v


def _params_of(job: Job, **changes: Any) -> VideoCreateParams:
    fields = {"model": job.model, "size": job.size, "webhook_url": job.webhook_url, "priority": job.priority.value,
              "loras": [lora.model_dump(include={"name", "scale"}) for lora in job.loras],
              **{name: getattr(job, name) for name in SHARED_FIELDS}}
    return parse(VideoCreateParams, fields | changes)
