"""From the HTTP submit body to a validated job, with the library's own validation rules."""

from __future__ import annotations

import base64
import binascii
import io
import re
import uuid

from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from serve_app.schemas import SHARED_FIELDS, Job, VideoCreateParams
from skyreels.models import SERVED_MODEL_IDS, ServedModel
from skyreels.request import GenerationRequest
from skyreels.validation import describe_validation_error

SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
DATA_URL_PATTERN = re.compile(r"^data:image/[\w.+-]+;base64,(.*)$", re.DOTALL)
MAX_IMAGE_BYTES = 20 * 1024 * 1024
TASKS = {model_id: task for task, model_id in SERVED_MODEL_IDS.items()}


class InvalidRequest(ValueError):
    """A submit the service refuses; the message says what is allowed."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


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


def read_image(data: bytes) -> Image.Image:
    """The RGB pixels of any image Pillow reads."""
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidRequest(f"input_reference is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidRequest(f"input_reference is not a readable image ({error})") from error


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def new_job(params: VideoCreateParams, image: Image.Image | None,
            served_models: list[ServedModel]) -> tuple[Job, GenerationRequest]:
    """Validates everything known at submit, so nothing fails mid-run for a reason known now: the job record
    and the request it runs (with its seed drawn)."""
    if params.model not in {model.id for model in served_models}:
        available = ", ".join(model.id for model in served_models)
        raise InvalidRequest(f"unknown model {params.model!r}; available models: {available}", 400)
    try:
        request = to_generation_request(params, image).with_seed()
    except ValidationError as error:
        raise InvalidRequest(validation_message(error)) from error
    job = Job(
        id=f"video_{uuid.uuid4().hex}",
        model=params.model,
        size=f"{request.width}x{request.height}",
        has_input_reference=image is not None,
        total_steps=request.num_inference_steps,
        **request.model_dump(include=set(SHARED_FIELDS)),
    )
    return job, request


def to_generation_request(source: VideoCreateParams | Job, image: Image.Image | None) -> GenerationRequest:
    height, width = parse_size(source.size)
    return GenerationRequest(
        task=TASKS[source.model],
        height=height,
        width=width,
        image=image,
        **{name: getattr(source, name) for name in SHARED_FIELDS},
    )


# GenerationRequest fields under the names a submit body gives them.
BODY_NAMES = {"height": "size", "width": "size", "image": "input_reference", "task": "model"}


def validation_message(error: ValidationError) -> str:
    """One line per rule broken, naming the field the client sent."""
    return describe_validation_error(error, rename=BODY_NAMES)
