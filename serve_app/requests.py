"""From the HTTP submit body to a validated job, with the library's own validation rules."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import secrets
import time
import warnings
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from serve_app.bodies import nests_deeper, too_deep_message
from serve_app.model_cards import model_card
from serve_app.loras import AdapterRefused, AdapterRegistry, AppliedLora
from serve_app.schemas import SHARED_FIELDS, Job, VideoCreateParams
from skyreels.models import SERVED_MODEL_IDS, ServedModel
from skyreels.request import MAX_FRAMES, GenerationRequest
from skyreels.validation import describe_errors

SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
DATA_URL_PATTERN = re.compile(r"^data:image/[\w.+-]+;base64,(.*)$", re.DOTALL)
BRACKETED_KEY = re.compile(r"^(\w+)\[(\w+)\]$")  # a form field of a nested object: video[id]
DATA_URL_OVERHEAD = 4 / 3  # base64
BODY_SLACK_BYTES = 64 * 1024  # the other fields of a body with an image
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
TASKS = {model_id: task for task, model_id in SERVED_MODEL_IDS.items()}
Model = TypeVar("Model", bound=BaseModel)


class UploadLimits(BaseModel):
    """What an input_reference may be (AppConfig's `uploads`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(20 * 2**20, ge=1, description="Largest image (or video) file; a bigger one (or body) gets "
                           "413.")
    max_pixels: int = Field(4096 * 4096, ge=1, description="Largest width x height, read from the header before "
                            "decoding: a bigger image (a decompression bomb) gets 413.")
    formats: list[str] = Field(["PNG", "JPEG", "WEBP"], description="Image formats accepted (Pillow's names); "
                               "others get 422.")
    video_formats: list[str] = Field(["mp4", "webm"], description="Formats of a video to extend (a `video` file "
                                     "of POST /v1/videos/extensions); others get 422. max_bytes and max_pixels (of "
                                     "a frame) hold for it too.")
    max_video_seconds: float = Field(30.0, gt=0, description="Longest video to extend; a longer one gets 413.")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_bytes * DATA_URL_OVERHEAD) + BODY_SLACK_BYTES


class ApiError(Exception):
    """A request the service answers with a 4xx: the same for HTTP clients and DeploymentHandle callers."""

    def __init__(self, message: str, status_code: int, code: str) -> None:
        super().__init__(message)
        self.message, self.status_code, self.code = message, status_code, code

    @property
    def headers(self) -> dict[str, str]:
        """Response headers that go with the error (Retry-After, ...)."""
        return {}

    def __reduce__(self) -> tuple[Any, ...]:  # crosses Ray's process boundary whole
        return type(self), (self.message, self.status_code, self.code)


class InvalidRequest(ApiError):
    """A submit the service refuses; the message says what is allowed."""

    def __init__(self, message: str, status_code: int = 422, code: str = "invalid_request") -> None:
        super().__init__(message, status_code, code)


async def read_fields(request: Request) -> tuple[dict[str, Any], bool]:
    """A JSON object, or a form's fields (files as bytes, `a[b]` keys as nested objects, empty fields left out),
    and whether its values are typed (JSON) rather than all text (a form). BodyGuard has limited the body's
    size and nesting before this reads it."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type in FORM_TYPES:
        try:
            form = await request.form()
        except (HTTPException, ValueError) as error:
            raise InvalidRequest(f"the body is not a readable form ({error})", 400, "invalid_body") from error
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            value = await value.read() if isinstance(value, UploadFile) else value
            nested = BRACKETED_KEY.match(key)
            if value == "":
                continue
            name = nested[1] if nested else key
            if name in fields and isinstance(fields[name], dict) != bool(nested):
                raise InvalidRequest(f"{name}: give {name} or {name}[...] fields, not both")
            if nested:
                fields.setdefault(name, {})[nested[2]] = value
            else:
                fields[key] = value
        return fields, False
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise InvalidRequest(f"send application/json or multipart/form-data, not {content_type}", 415,
                             "unsupported_media_type")
    try:
        body = await request.json()
    except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, or unmatched brackets nested deep
        raise InvalidRequest(f"the body is not valid JSON ({error})", 400, "invalid_json") from error
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be a JSON object, not {type(body).__name__}")
    return body, True


def loras_field(text: Any) -> Any:
    """A multipart body's `loras`: a JSON array, as a JSON body gives it."""
    if not isinstance(text, str):
        return text
    if nests_deeper(text.encode()):
        raise InvalidRequest(too_deep_message("loras"), 400, "invalid_json")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InvalidRequest(f"loras: in a multipart body, give a JSON array such as "
                             f'[{{"name": "style", "scale": 0.8}}] ({error})') from error


def image_of(reference: Any, limits: UploadLimits) -> Image.Image | None:
    """An input_reference: a file, a data URL, or OpenAI's {"image_url": data URL}."""
    if isinstance(reference, dict):
        if set(reference) != {"image_url"}:
            raise InvalidRequest("input_reference: upload the image, or give {\"image_url\": \"data:image/...\"}; "
                                 "file ids are not supported")
        reference = reference["image_url"]
    if reference is None:
        return None
    if isinstance(reference, str):
        reference = decode_data_url(reference)
    if not isinstance(reference, bytes):
        raise InvalidRequest("input_reference must be an image file or a data URL")
    return read_image(reference, limits)


def parse(model: type[Model], fields: dict[str, Any], typed: bool = True) -> Model:
    """`fields` as `model`; typed values must have their field's type (false is no number), text is converted."""
    try:
        return model.model_validate(fields, strict=typed)
    except ValidationError as error:
        raise InvalidRequest(validation_message(error.errors(), model)) from error


def parse_size(size: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (height, width)."""
    match = SIZE_PATTERN.match(size.strip())
    if not match:
        raise InvalidRequest(f"size must be WIDTHxHEIGHT such as 960x544, 544x960 or 720x720, got {size!r}")
    width, height = map(int, match.groups())
    return height, width


def decode_data_url(data_url: str) -> bytes:
    match = DATA_URL_PATTERN.match(data_url)
    if not match:
        raise InvalidRequest("input_reference must be a data URL: data:image/<type>;base64,<data>")
    try:
        return base64.b64decode(match.group(1), validate=True)
    except binascii.Error as error:
        raise InvalidRequest(f"input_reference is not valid base64 ({error})") from error


def read_image(data: bytes, limits: UploadLimits) -> Image.Image:
    """The RGB pixels of an image within `limits`; its size is checked from the header, before decoding."""
    if len(data) > limits.max_bytes:
        raise InvalidRequest(f"input_reference is {len(data)} bytes; at most {limits.max_bytes}", 413,
                             "image_too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in limits.formats:
                raise InvalidRequest(f"input_reference is {image.format}; send one of {', '.join(limits.formats)}",
                                     422, "unsupported_image_format")
            width, height = image.size
            if width * height > limits.max_pixels:
                raise InvalidRequest(f"input_reference is {width}x{height} pixels; at most {limits.max_pixels} "
                                     "pixels", 413, "image_too_large")
            return image.convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise InvalidRequest(f"input_reference is refused: {error}", 413, "image_too_large") from error
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidRequest(f"input_reference is not a readable image ({error})") from error


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def new_job(params: VideoCreateParams, image: Image.Image | None, served_models: list[ServedModel],
            adapters: AdapterRegistry | None = None, **lineage: Any) -> tuple[Job, GenerationRequest]:
    """Validates everything known at submit, so nothing fails mid-run for a reason known now: the job record
    and the request it runs (with its seed drawn). Fields left out get the model's defaults; the adapters of
    params.loras are looked up in `adapters` and checked against the model (this may read adapter files: call
    it off the event loop); `lineage` names the job this one remixes or extends."""
    served = {model.id: model for model in served_models}
    if params.model not in served:
        raise InvalidRequest(f"unknown model {params.model!r}; available models: {', '.join(served)}", 400)
    params = with_model_defaults(params, served[params.model])
    try:
        loras = (adapters or AdapterRegistry(None, served_models)).resolve(params.loras, served[params.model])
    except AdapterRefused as error:
        raise InvalidRequest(str(error)) from error
    try:
        request = to_generation_request(params, image, loras).with_seed()
    except ValidationError as error:
        raise InvalidRequest(validation_message(error.errors())) from error
    job = Job(
        # hex nanoseconds first: ids sort in submit order, as pages do
        id=f"video_{time.time_ns():016x}{secrets.token_hex(8)}",
        model=params.model,
        size=f"{request.width}x{request.height}",
        has_input_reference=image is not None,
        total_steps=request.num_inference_steps,
        loras=loras,
        **request.model_dump(include=set(SHARED_FIELDS)),
        **lineage,
    ).model_copy(update={"prompt": params.prompt.strip()})  # as typed: the model's prefix stays in the request
    return job, request


def with_model_defaults(params: VideoCreateParams, model: ServedModel) -> VideoCreateParams:
    """`params` with the model's defaults where a field was left out, and `seconds` turned into frames."""
    defaults = model_card(model).defaults
    if params.seconds is not None and params.num_frames is not None:
        raise InvalidRequest("give seconds or num_frames, not both")
    num_frames = defaults.num_frames if params.num_frames is None else params.num_frames
    if params.seconds is not None:
        num_frames = frames_for(float(params.seconds), params.fps)
    steps = params.num_inference_steps
    return params.model_copy(update={
        "size": defaults.size if params.size is None else params.size,
        "num_frames": num_frames,
        "num_inference_steps": defaults.num_inference_steps if steps is None else steps,
        "seconds": None,
    })


def frames_for(seconds: float, fps: int) -> int:
    """Frames of `seconds` of video at `fps`, rounded to the nearest 4k+1 the model makes."""
    frames = 4 * round(seconds * fps / 4) + 1 if seconds * fps <= 4 * MAX_FRAMES else math.inf  # 1e308 s: no int
    if frames > MAX_FRAMES:
        raise InvalidRequest(f"seconds: at most {(MAX_FRAMES - 1) / fps:g} s at {fps} fps ({MAX_FRAMES} frames), "
                             f"got {seconds:g}")
    return frames


def to_generation_request(source: VideoCreateParams | Job, image: Image.Image | None,
                          loras: list[AppliedLora] | None = None) -> GenerationRequest:
    """`loras`: the adapters a submit's names resolved to; a stored job has its own."""
    height, width = parse_size(source.size)
    if loras is None:
        loras = source.loras if isinstance(source, Job) else []
    return GenerationRequest(
        task=TASKS[source.model],
        height=height,
        width=width,
        image=image,
        loras=[lora.spec for lora in loras],
        **{name: getattr(source, name) for name in SHARED_FIELDS},
    )


# GenerationRequest fields under the names a submit body gives them.
BODY_NAMES = {"height": "size", "width": "size", "image": "input_reference", "task": "model"}


def validation_message(errors: list[Any], model: type[BaseModel] | None = None, skip_loc: int = 0,
                       whole: str = "request") -> str:
    """One line per rule broken (pydantic's error dicts), naming the field the client sent; fields `model` does
    not have are named first, with those it has (as OpenAI's API does: a misspelt field does not go unnoticed).
    `skip_loc` drops leading loc parts (FastAPI's "body"), `whole` names an error about no one field."""
    unknown = [".".join(map(str, item["loc"][skip_loc:])) for item in errors if item["type"] == "extra_forbidden"]
    known = [item for item in errors if item["type"] != "extra_forbidden"]
    lines = [describe_errors(known, rename=BODY_NAMES, skip_loc=skip_loc, whole=whole)] if known else []
    if unknown:
        allowed = f"; the fields are: {', '.join(model.model_fields)}" if model is not None else ""
        lines.insert(0, f"unrecognized field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{allowed}")
    return "; ".join(lines)
