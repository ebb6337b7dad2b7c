"""VideoIngress: the HTTP face (FastAPI through @serve.ingress): jobs API, SSE, metrics, web page."""

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from ray import serve
from PIL import Image
from starlette.datastructures import UploadFile

from skyreels.artifacts import THUMBNAIL, VIDEO, ArtifactStore
from serve_app.metrics import JobMetrics
from serve_app.requests import InvalidRequest, decode_data_url, new_job, read_image, to_png, validation_message
from serve_app.runner import JobRunner, QueueFull
from serve_app.schemas import Job, JobList, JobStatus, VideoCreateParams
from serve_app.store import JobStore
from skyreels.models import ServedModel
from skyreels.validation import describe_errors

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SSE_KEEPALIVE_S = 15.0
VARIANTS = {"video": (VIDEO, "video/mp4"), "thumbnail": (THUMBNAIL, "image/jpeg")}

app = FastAPI(title="SkyReels-V1 video API", version="1")
app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")


def error_response(status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code, headers=headers)


def _json(model: BaseModel, status_code: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status_code)


def _not_found(job_id: str) -> JSONResponse:
    return error_response(404, "not_found", f"no video job {job_id!r}")


@app.exception_handler(RequestValidationError)
async def _on_validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    # loc starts with where the value came from ("body", "query"); the client knows the field by name
    return error_response(422, "invalid_request", describe_errors(error.errors(), skip_loc=1, whole="body"))


# serve.ingress snapshots the module globals: every helper a route uses is defined above.
@serve.ingress(app)
class VideoIngress:
    def __init__(
        self,
        text_encoder: Any,
        denoiser: Any,
        vae: Any,
        served_models: list[ServedModel],
        database_path: str,
        artifact_url: str,
        max_queued_jobs: int,
        max_running_jobs: int,
        decode_on_gang: bool = False,
    ) -> None:
        self.served_models = served_models
        self.store = JobStore(database_path)
        self.artifacts = ArtifactStore(artifact_url)
        self.metrics = JobMetrics()
        self.runner = JobRunner(
            self.store, self.artifacts, text_encoder, denoiser, vae,
            max_queued_jobs=max_queued_jobs, max_running_jobs=max_running_jobs, metrics=self.metrics,
            decode_on_gang=decode_on_gang,
        )
        self._started: asyncio.Task | None = None
        try:  # recover interrupted jobs right away when constructed on the event loop
            self._runner_started()
        except RuntimeError:
            logger.debug("no running loop yet; the runner starts with the first request")

    def _runner_started(self) -> asyncio.Task:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self.runner.start())
        return self._started

    @app.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        started = self._runner_started()
        ready = started.done() and started.exception() is None
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": model.id, "object": "model", "owned_by": "skywork", "task": model.task.value}
            for model in self.served_models
        ]}

    @app.post("/v1/videos", status_code=202)
    async def create(self, request: Request) -> JSONResponse:
        await self._runner_started()
        try:
            params, image = await self._read_submit(request)
            job = await self._submit(params, image)
        except InvalidRequest as error:
            return error_response(error.status_code, "invalid_request", str(error))
        except QueueFull as error:
            return error_response(429, "queue_full", str(error), headers={"Retry-After": str(error.retry_after_s)})
        return _json(self._view(job), status_code=202)

    @app.get("/v1/videos")
    async def list_jobs(self, limit: int = Query(20, ge=1, le=100), after: str | None = None) -> Response:
        try:
            jobs, has_more = self.store.list(limit=limit, after=after)
        except KeyError:
            return error_response(400, "invalid_cursor", f"unknown cursor {after!r}: pass a job id from a previous page")
        return _json(JobList(data=[self._view(j) for j in jobs], has_more=has_more,
                             next_cursor=jobs[-1].id if has_more else None))

    @app.get("/v1/videos/{job_id}")
    async def get_job(self, job_id: str) -> Response:
        job = self.store.get(job_id)
        return _json(self._view(job)) if job else _not_found(job_id)

    @app.get("/v1/videos/{job_id}/content")
    async def content(self, job_id: str, variant: str = "video") -> Response:
        job = self.store.get(job_id)
        if job is None:
            return _not_found(job_id)
        if variant not in VARIANTS:
            return error_response(400, "invalid_variant", f"variant must be one of {', '.join(VARIANTS)}")
        if job.status is not JobStatus.COMPLETED:
            return error_response(409, "not_ready", f"job {job_id} is {job.status.value}; content exists once completed")
        name, media_type = VARIANTS[variant]
        data = await asyncio.to_thread(self.artifacts.get, job_id, name)
        return Response(data, media_type=media_type)

    @app.post("/v1/videos/{job_id}/cancel")
    async def cancel(self, job_id: str) -> Response:
        job = self.store.get(job_id)
        if job is None:
            return _not_found(job_id)
        if job.status.is_terminal:
            return error_response(409, "already_finished", f"job {job_id} is already {job.status.value}")
        return _json(self._view(await self.runner.cancel(job_id)))

    @app.delete("/v1/videos/{job_id}")
    async def delete(self, job_id: str) -> JSONResponse:
        job = self.store.get(job_id)
        if job is None:
            return _not_found(job_id)
        if not job.status.is_terminal:
            await self.runner.cancel(job_id)
        self.store.delete(job_id)
        await asyncio.to_thread(self.artifacts.delete, job_id)
        return JSONResponse({"id": job_id, "object": "video.deleted", "deleted": True})

    @app.get("/v1/videos/{job_id}/events")
    async def events(self, job_id: str) -> Response:
        if self.store.get(job_id) is None:
            return _not_found(job_id)
        return StreamingResponse(self._event_stream(job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # Python callers inside the cluster: serve.get_app_handle("skyreels").submit_job.remote(...)
    async def submit_job(self, params: dict[str, Any], input_reference: bytes | None = None) -> dict[str, Any]:
        """Submit without HTTP; raises InvalidRequest or QueueFull like the route answers 4xx."""
        await self._runner_started()
        image = read_image(input_reference) if input_reference is not None else None
        try:
            params = VideoCreateParams.model_validate(params)
        except ValidationError as error:
            raise InvalidRequest(validation_message(error)) from error
        return self._view(await self._submit(params, image)).model_dump(mode="json")

    async def job_status(self, job_id: str) -> dict[str, Any] | None:
        job = self.store.get(job_id)
        return self._view(job).model_dump(mode="json") if job else None

    async def _event_stream(self, job_id: str):
        async with self.runner.events.follow(job_id) as updates:
            job = self.store.get(job_id)
            while job is not None:
                yield f"data: {json.dumps(self._view(job).model_dump(mode='json'))}\n\n"
                if job.status.is_terminal:
                    return
                try:
                    job = await asyncio.wait_for(updates.get(), SSE_KEEPALIVE_S)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    job = self.store.get(job_id)

    async def _submit(self, params: VideoCreateParams, image: Image.Image | None) -> Job:
        job, request = new_job(params, image, self.served_models)
        return await self.runner.submit(job, request, to_png(image) if image is not None else None)

    async def _read_submit(self, request: Request) -> tuple[VideoCreateParams, Image.Image | None]:
        content_type = request.headers.get("content-type", "")
        try:
            if content_type.startswith("multipart/form-data"):
                form = await request.form()
                upload = form.get("input_reference")
                fields = {k: v for k, v in form.items() if k != "input_reference" and v != ""}
                params = VideoCreateParams.model_validate(fields)
                image = await upload.read() if isinstance(upload, UploadFile) else None
                if isinstance(upload, str) and upload:
                    image = decode_data_url(upload)
            else:
                try:
                    body = await request.json()
                except json.JSONDecodeError as error:
                    raise InvalidRequest(f"the body is not valid JSON ({error})", 400) from error
                params = VideoCreateParams.model_validate(body)
                image = decode_data_url(params.input_reference) if params.input_reference else None
        except ValidationError as error:
            raise InvalidRequest(validation_message(error)) from error
        return params, read_image(image) if image is not None else None

    def _view(self, job: Job) -> Job:
        """The job as clients see it: with its live queue position."""
        position = self.runner.queue_position(job.id)
        return job.model_copy(update={"queue_position": position}) if position else job
