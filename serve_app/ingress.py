"""VideoIngress: the HTTP face (FastAPI through @serve.ingress) and the DeploymentHandle face of the jobs API.

The OpenAPI document (/openapi.json) is the contract: every body, response and error status is in it. Both
faces call one VideoService; an ApiError it raises is a 4xx with `{"error": {"code", "message"}}` over HTTP,
and the same exception for a handle caller.

Trust model: HTTP is the boundary where clients are checked. With API keys configured, every route but
/healthz, /readyz, the page and the OpenAPI document needs a key, and a key
reaches only the jobs it submitted. The handle API has no keys: anything that can call a DeploymentHandle
already runs code in the Ray cluster, so it is trusted as the operator is. Its methods take an optional
`owner` (a key id, `key_...`): given, they act as that key would (its jobs only, its limits), e.g. for a
gateway that authenticates users itself; left out, they reach every job.
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
import pathlib
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from ray import serve
from ray.serve.schema import ReplicaState
from starlette.exceptions import HTTPException
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import Match

from deployments.tracing import TracingConfig, setup_tracing
from serve_app.auth import AccessConfig, ApiKeys, RequestGate, install_request_id_logging
from serve_app.bodies import BodyGuard, error_response
from serve_app.contract import ExtendParams, ModelList, Readiness, RemixParams, Video, VideoDeleted, VideoList
from serve_app.idempotency import HEADER, fingerprint, once
from serve_app.limits import PriorityPolicy, SubmitLimits
from serve_app.metrics import JobMetrics
from serve_app.openapi import CONTENT, EXTEND_BODY, IDEMPOTENT, SUBMIT_BODY, errors, install_openapi
from serve_app.loras import AdapterList, AdapterRegistry
from serve_app.requests import ApiError, UploadLimits, image_of, loras_field, parse, read_fields, validation_message
from serve_app.retention import RetentionConfig, sweep_forever
from serve_app.runner import JobPolicy, JobRunner, QueueFull
from serve_app.schemas import Job, JobStatus, VideoCreateParams, WebhookDelivery
from serve_app.service import MEDIA_TYPES, Variant, VideoService
from serve_app.store import JobStore, StoreUnavailable, open_store
from serve_app.webhooks import WebhookConfig, WebhookSender
from skyreels.artifacts import ArtifactStore
from skyreels.models import ServedModel

logger = logging.getLogger(__name__)

STATIC_DIR = pathlib.Path(__file__).parent / "static"
SSE_KEEPALIVE_S = 15.0
READY_PROBE_S = 2.0
STORE_RETRY_AFTER_S = 5  # a database restart takes seconds

class JobIdConvertor(Convertor):
    """A path segment that can be a job id: /v1/videos/extensions is another route, not a job."""

    regex = "video_[0-9a-f]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("job_id", JobIdConvertor())
VideoId = Annotated[str, Path(pattern=f"^{JobIdConvertor.regex}$", description="A job id, as POST /v1/videos gave it.")]

app = FastAPI(title="SkyReels-V1 video API", version="1",
              description="OpenAI-style asynchronous video jobs: submit, follow, download. The official `openai` "
                          "client works against `/v1`.")
app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
install_openapi(app)


def _replica_access() -> tuple[ApiKeys, AccessConfig]:
    return serve.get_replica_context().servable_object.access


def _replica_body_limit() -> int:
    return serve.get_replica_context().servable_object.uploads.max_body_bytes


app.add_middleware(BodyGuard, limit=_replica_body_limit)  # inside RequestGate: a request without a key is not read
app.add_middleware(RequestGate, access=_replica_access, proxy_echoes=True)


class ReplicaHeader:
    """Names the ingress replica that answered, in X-Ingress-Replica (which replica served a request, when several
    do)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        name = serve.get_replica_context().servable_object.runner.runner_id.encode()

        async def named(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-ingress-replica", name)]
            await send(message)

        await self.app(scope, receive, named)


app.add_middleware(ReplicaHeader)


def _owner(request: Request) -> str | None:
    """The caller's API key id, as RequestGate found it (None without keys)."""
    return getattr(request.state, "owner", None)


Owner = Annotated[str | None, Depends(_owner)]


def _json(model: BaseModel, status_code: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status_code)


@app.exception_handler(ApiError)
async def _on_api_error(_: Request, error: ApiError) -> JSONResponse:
    return error_response(error.status_code, error.code, error.message, headers=error.headers)


@app.exception_handler(Exception)
async def _on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("%s %s failed", request.method, request.url.path)  # the trace goes to the log, not the body
    return error_response(500, "internal_error", "the server failed to answer this request; the request id in "
                                                 "X-Request-ID finds it in the server's log")


@app.exception_handler(QueueFull)
async def _on_queue_full(_: Request, error: QueueFull) -> JSONResponse:
    return error_response(429, "queue_full", str(error), headers={"Retry-After": str(error.retry_after_s)})


@app.exception_handler(StoreUnavailable)
async def _on_store_unavailable(_: Request, error: StoreUnavailable) -> JSONResponse:
    logger.warning("%s", error)
    return error_response(503, "store_unavailable", "the job store cannot be reached or written now; nothing was "
                          "changed, retry after the Retry-After header's seconds",
                          headers={"Retry-After": str(STORE_RETRY_AFTER_S)})


@app.exception_handler(RequestValidationError)
async def _on_validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    # loc starts with where the value came from ("body", "query"); the client knows the field by name
    return error_response(422, "invalid_request", validation_message(list(error.errors()), skip_loc=1, whole="body"))


@app.exception_handler(HTTPException)
async def _on_http_error(request: Request, error: HTTPException) -> JSONResponse:
    headers = dict(error.headers or {})
    if error.status_code == 405:  # every method of the path, not only those of the first route that matched it
        headers["Allow"] = ", ".join(sorted(_allowed_methods(request)))
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return error_response(error.status_code, code, str(error.detail), headers=headers)


async def _live_stages(app_name: str, stages: dict[str, Any]) -> dict[str, bool]:
    """Each stage: Serve's controller counts a RUNNING replica of it, one that was built and passes its health
    checks (a gang with a dead worker fails them). This never waits behind the stage's work, as a call would."""
    try:
        status = await asyncio.wait_for(asyncio.to_thread(serve.status), READY_PROBE_S)
        deployments = status.applications[app_name].deployments
    except Exception:  # noqa: BLE001 - the controller did not answer in time: nothing is known to be live
        logger.warning("readiness: Serve's controller did not answer", exc_info=True)
        return {name: False for name in stages}
    return {name: stage.deployment_name in deployments
            and deployments[stage.deployment_name].replica_states.get(ReplicaState.RUNNING, 0) > 0
            for name, stage in stages.items()}


async def _store_answers(store: JobStore) -> bool:
    try:
        await asyncio.wait_for(asyncio.to_thread(store.count, JobStatus.QUEUED), READY_PROBE_S)
        return True
    except Exception:  # noqa: BLE001 - unreachable, locked, or too slow: the store cannot take work now
        logger.warning("readiness: the job store did not answer", exc_info=True)
        return False


def _check_replicas(store: JobStore, deployment: Any) -> None:
    """Several ingress replicas need a store they can share (PostgreSQL): on SQLite each would keep its own jobs."""
    autoscaling = deployment.autoscaling_config
    most = autoscaling.max_replicas if autoscaling is not None else deployment.num_replicas
    if most > 1 and not store.shared:
        raise ValueError(f"VideoIngress may run {most} replicas, but its job store ({type(store).__name__}) serves "
                         "one: set database_url (PostgreSQL) for several ingress replicas, or keep one replica")


def _allowed_methods(request: Request) -> set[str]:
    return {method for route in app.routes if getattr(route, "methods", None)
            and route.matches(request.scope)[0] is not Match.NONE for method in route.methods}


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
        database_url: str | None,
        artifact_url: str,
        policy: JobPolicy,
        decode_on_gang: bool = False,
        shutdown_grace_s: float = 15.0,
        access: AccessConfig = AccessConfig(),
        uploads: UploadLimits = UploadLimits(),
        webhooks: WebhookConfig = WebhookConfig(),
        retention: RetentionConfig = RetentionConfig(),
        lora_url: str | None = None,
        tracing: TracingConfig = TracingConfig(),
    ) -> None:
        install_request_id_logging()
        setup_tracing(tracing, "VideoIngress")
        self.served_models = served_models
        self.stages = {"text_encoder": text_encoder, "denoiser": denoiser, "vae": vae}
        self.store = open_store(database_path, database_url)
        replica = serve.get_replica_context()
        _check_replicas(self.store, replica._deployment_config)
        self.artifacts = ArtifactStore(artifact_url)
        self.metrics = JobMetrics()
        self.access = ApiKeys.load(access), access
        self.uploads, self.retention = uploads, retention
        self.webhooks = WebhookSender(webhooks, self._record_delivery)
        self.runner = JobRunner(self.store, self.artifacts, text_encoder, denoiser, vae, policy, self.metrics,
                                decode_on_gang=decode_on_gang, on_end=self._job_ended,
                                runner_id=f"{replica.deployment}#{replica.replica_tag}")
        self.shutdown_grace_s = shutdown_grace_s
        self.service = VideoService(self.store, self.artifacts, self.runner, served_models,
                                    SubmitLimits(access.max_jobs_in_flight, access.max_submits_per_minute),
                                    self.webhooks, retention.ttl_s, AdapterRegistry(lora_url, served_models),
                                    PriorityPolicy(policy.default_priority, access.default_max_priority, access.keys))
        self._started: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        try:  # recover interrupted jobs right away when constructed on the event loop
            self._runner_started()
        except RuntimeError:
            logger.debug("no running loop yet; the runner starts with the first request")

    async def __del__(self) -> None:
        """Serve stops this replica: running jobs may finish within the grace period, the rest are handed back."""
        await self.runner.shutdown(self.shutdown_grace_s)
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.webhooks.close()

    def _runner_started(self) -> asyncio.Task:
        if self._started is None:
            loop = asyncio.get_running_loop()
            self._started = loop.create_task(self.runner.start())
            self._sweeper = loop.create_task(sweep_forever(self.store, self.artifacts, self.retention))
            self.webhooks.resume(self.store.ended_since, self._webhook_view)  # those a stopped replica left
        return self._started

    def _job_ended(self, job: Job) -> None:
        if job.webhook_url is not None:
            self.webhooks.send(job.webhook_url, self._webhook_view(job))

    def _webhook_view(self, job: Job) -> dict[str, Any]:
        return self.service.view(job).model_dump(mode="json")

    def _record_delivery(self, job_id: str, deliveries: list[WebhookDelivery]) -> None:
        """Each webhook attempt of a job: into its record, and counted."""
        self.metrics.webhook_attempt(deliveries[-1])
        self.store.update(job_id, webhook_deliveries=deliveries)

    async def _once(self, request: Request, owner: str | None, fields: dict[str, Any],
                    submit: Callable[[], Awaitable[Video]]) -> JSONResponse:
        """A submit route's answer (202 + the job), made once per Idempotency-Key."""
        await self._runner_started()
        route = request.scope["route"].path
        video = await once(self.store, owner, request.headers.get(HEADER), fingerprint(route, fields), submit,
                           lambda job_id: self.service.view(self.service.job(job_id, owner)))
        return _json(video, status_code=202)

    # ------------------------------------------------------------------ HTTP

    @app.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz", operation_id="healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", operation_id="readyz", response_model=Readiness,
             responses={503: {"model": Readiness, "description": "A stage cannot take work yet (jobs still queue)."}})
    async def readyz(self) -> JSONResponse:
        """200 when the app can take work: every stage has a live replica (the gang built and whole), however busy
        (jobs queue), the job store answers and the queue is recovered. 503 otherwise; jobs submitted then wait."""
        started = self._runner_started()
        stages, store = await asyncio.gather(_live_stages(serve.get_replica_context().app_name, self.stages),
                                             _store_answers(self.store))
        recovered = started.done() and started.exception() is None
        readiness = Readiness(ready=recovered and store and all(stages.values()), stages=stages, store=store)
        return _json(readiness, status_code=200 if readiness.ready else 503)

    @app.get("/v1/models", operation_id="listModels", response_model=ModelList, responses=errors(401))
    async def http_models(self) -> JSONResponse:
        return _json(self.service.models())

    @app.get("/v1/loras", operation_id="listLoras", response_model=AdapterList, responses=errors(401))
    async def http_loras(self) -> JSONResponse:
        """The server's LoRA adapters, each with the models it fits: what a submit may name in `loras`."""
        return _json(await self.service.loras())

    @app.post("/v1/videos", status_code=202, operation_id="createVideo", response_model=Video,
              openapi_extra=SUBMIT_BODY, responses=errors(400, 401, 403, 409, 413, 415, 422, 429, 503))
    async def http_create(self, request: Request, owner: Owner) -> JSONResponse:
        fields, typed = await read_fields(request)

        async def submit() -> Video:
            image = image_of(fields.get("input_reference"), self.uploads)
            params = {name: value for name, value in fields.items() if name != "input_reference"}
            if not typed and "loras" in params:
                params["loras"] = loras_field(params["loras"])
            return await self._submit(parse(VideoCreateParams, params, typed), image, owner)

        return await self._once(request, owner, fields, submit)

    @app.get("/v1/videos", operation_id="listVideos", response_model=VideoList, responses=errors(401, 404, 422, 503))
    async def http_list(self, owner: Owner, limit: int = Query(20, ge=1, le=100),
                        after: str | None = Query(None, pattern=f"^{JobIdConvertor.regex}$",
                                                  description="last_id of the previous page"),
                        order: Literal["desc"] = Query("desc", description="Newest first.")) -> JSONResponse:
        return _json(self.service.list(limit=limit, after=after, owner=owner))

    @app.post("/v1/videos/extensions", status_code=202, operation_id="extendVideo", response_model=Video,
              openapi_extra=EXTEND_BODY, responses=errors(400, 401, 404, 409, 413, 415, 422, 429, 503))
    async def http_extend(self, request: Request, owner: Owner) -> JSONResponse:
        """Extends a completed job's video (`video: {"id"}`), or an uploaded mp4 or webm (a `video` file)."""
        fields, typed = await read_fields(request)
        upload = fields.get("video") if isinstance(fields.get("video"), bytes) else None
        params = {name: value for name, value in fields.items() if upload is None or name != "video"}

        async def extend() -> Video:
            extension = parse(ExtendParams, params, typed)
            if upload is not None:
                return await self.service.extend_clip(extension, upload, self.uploads, owner)
            return await self.service.extend(extension, owner)

        return await self._once(request, owner, fields, extend)

    @app.get("/v1/videos/{video_id:job_id}", operation_id="getVideo", response_model=Video,
             responses=errors(401, 404, 422, 503))
    async def http_get(self, video_id: VideoId, owner: Owner) -> JSONResponse:
        return _json(self.service.view(self.service.job(video_id, owner)))

    @app.get("/v1/videos/{video_id:job_id}/content", operation_id="downloadVideoContent", response_class=Response,
             responses={200: CONTENT, **errors(401, 404, 409, 422, 503)})
    async def http_content(self, video_id: VideoId, owner: Owner, variant: Variant = "video") -> Response:
        return Response(await self.service.content(video_id, variant, owner), media_type=MEDIA_TYPES[variant])

    @app.post("/v1/videos/{video_id:job_id}/cancel", operation_id="cancelVideo", response_model=Video,
              responses=errors(401, 404, 409, 422, 503))
    async def http_cancel(self, video_id: VideoId, owner: Owner) -> JSONResponse:
        return _json(await self.service.cancel(video_id, owner))

    @app.post("/v1/videos/{video_id:job_id}/remix", status_code=202, operation_id="remixVideo", response_model=Video,
              openapi_extra=IDEMPOTENT, responses=errors(400, 401, 404, 409, 422, 429, 503))
    async def http_remix(self, video_id: VideoId, remix: RemixParams, request: Request, owner: Owner) -> JSONResponse:
        return await self._once(request, owner, {"video_id": video_id, **remix.model_dump()},
                                lambda: self.service.remix(video_id, remix, owner))

    @app.delete("/v1/videos/{video_id:job_id}", operation_id="deleteVideo", response_model=VideoDeleted,
                responses=errors(401, 404, 422, 503))
    async def http_delete(self, video_id: VideoId, owner: Owner) -> JSONResponse:
        return _json(await self.service.delete(video_id, owner))

    @app.get("/v1/videos/{video_id:job_id}/events", operation_id="followVideo", response_class=StreamingResponse,
             responses={200: {"description": "Server-sent events: `data: <the job as JSON>` after every change, "
                                             "until it ends.", "content": {"text/event-stream": {}}},
                        **errors(401, 404, 422, 503)})
    async def http_events(self, video_id: VideoId, owner: Owner) -> StreamingResponse:
        self.service.job(video_id, owner)
        return StreamingResponse(self._event_stream(video_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _event_stream(self, job_id: str) -> AsyncIterator[str]:
        async for video in self.service.follow(job_id, SSE_KEEPALIVE_S):
            yield ": keep-alive\n\n" if video is None else f"data: {json.dumps(video.model_dump(mode='json'))}\n\n"

    async def _submit(self, params: VideoCreateParams, image: Any, owner: str | None) -> Video:
        await self._runner_started()
        return await self.service.submit(params, image, owner=owner)

    # ------------------------------------------------------------------ DeploymentHandle API
    # serve.get_app_handle("skyreels").submit_job.remote({...}); every method answers what the HTTP route of the
    # same name does, as plain JSON-able dicts, and raises the route's ApiError (or QueueFull) where it answers 4xx.
    # `owner`: act as that API key (its jobs only, its limits); None reaches every job (see the module's trust model).

    async def submit_job(self, params: dict[str, Any], input_reference: bytes | None = None,
                         owner: str | None = None) -> dict[str, Any]:
        """POST /v1/videos: `params` are the JSON body's fields; `input_reference` the I2V image's bytes."""
        video = await self._submit(parse(VideoCreateParams, params), image_of(input_reference, self.uploads), owner)
        return video.model_dump(mode="json")

    async def get_job(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        return self.service.view(self.service.job(job_id, owner)).model_dump(mode="json")

    async def list_loras(self) -> dict[str, Any]:
        return (await self.service.loras()).model_dump(mode="json")

    async def list_jobs(self, limit: int = 20, after: str | None = None, owner: str | None = None) -> dict[str, Any]:
        return self.service.list(limit=limit, after=after, owner=owner).model_dump(mode="json")

    async def follow_job(self, job_id: str, owner: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """The job after every change, until it ends: call with `handle.options(stream=True)`."""
        async for video in self.service.follow(job_id, owner=owner):
            yield video.model_dump(mode="json")

    async def wait_for_job(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        """The job once it has ended (completed, failed or cancelled)."""
        async for video in self.service.follow(job_id, owner=owner):
            if video.status.is_terminal:
                return video.model_dump(mode="json")
        raise AssertionError("follow ends on a terminal job")

    async def job_content(self, job_id: str, variant: Variant = "video", owner: str | None = None) -> bytes:
        return await self.service.content(job_id, variant, owner)

    async def job_video_url(self, job_id: str, owner: str | None = None) -> str:
        """Where the finished video is stored (the artifact store's URL: a path, s3://...), to read directly."""
        return await self.service.video_url(job_id, owner)

    async def cancel_job(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        return (await self.service.cancel(job_id, owner)).model_dump(mode="json")

    async def delete_job(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        return (await self.service.delete(job_id, owner)).model_dump(mode="json")

    async def remix_job(self, job_id: str, prompt: str, owner: str | None = None) -> dict[str, Any]:
        await self._runner_started()
        remix = parse(RemixParams, {"prompt": prompt})
        return (await self.service.remix(job_id, remix, owner)).model_dump(mode="json")

    async def extend_job(self, job_id: str, prompt: str, owner: str | None = None, **length: Any) -> dict[str, Any]:
        """POST /v1/videos/extensions; `length`: seconds= or num_frames= of the continuation."""
        await self._runner_started()
        params = parse(ExtendParams, {"prompt": prompt, "video": {"id": job_id}, **length})
        return (await self.service.extend(params, owner)).model_dump(mode="json")
