"""The parts of the OpenAPI document FastAPI cannot infer: bodies read by hand (JSON or multipart), binary
content, and the one error shape under every error status a route answers."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from serve_app.contract import ErrorResponse, ExtendParams
from serve_app.idempotency import HEADER, MAX_KEY_LENGTH
from serve_app.schemas import VideoCreateParams

REF = "#/components/schemas/{model}"
ERROR_MEANINGS = {
    400: "Malformed body (not JSON, an unreadable form), or a model this server does not serve.",
    401: "The server has API keys and the request has none, or a wrong one (`Authorization: Bearer <key>`).",
    403: "The API key may not use the priority class asked for (access.keys, access.default_max_priority).",
    404: "No such job (the one named in the path, or the `after` cursor), or one another API key submitted.",
    409: "The job is not in a state that allows this (not completed yet, or already finished), or a request with "
         "the same Idempotency-Key is still being submitted.",
    413: "The body or the image is too large (bytes, or pixels: decompression bombs are refused).",
    415: "The body is neither JSON nor a form.",
    422: "A field breaks a rule; the message names the field and what is allowed. Also: an image format not "
         "accepted, a webhook_url this server does not call, an Idempotency-Key reused with another request.",
    429: "The queue is full, or this API key is at its limit of jobs in flight or submits per minute; retry after "
         "the Retry-After header's seconds.",
    503: "The job store cannot be reached or written now (its database restarting, a full or read-only disk); "
         "nothing was changed: retry after the Retry-After header's seconds.",
}
CONTENT = {
    "description": "The video (mp4) or its thumbnail (JPEG), by `variant`.",
    "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
}


IDEMPOTENT = {"parameters": [{
    "name": HEADER, "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
    "description": "A retried request with the same key (and the same body) gets the job the first one made, "
                   "not a new one; the same key with another body gets 422.",
}]}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries: each status with its meaning and the error shape."""
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": ERROR_MEANINGS[status]} for status in statuses}
    for status in {429, 503} & set(statuses):
        responses[status]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}
    return responses


def _form_schema(model: type[BaseModel], files: dict[str, str]) -> dict[str, Any]:
    """The model's fields as form fields: no nulls (a field is sent or not), `files` as uploads."""
    schema = model.model_json_schema(ref_template=REF)
    properties = {}
    for name, prop in schema["properties"].items():
        options = [option for option in prop.pop("anyOf", []) if option.get("type") != "null"]
        if prop.get("default", "") is None:
            del prop["default"]
        properties[name] = (options[0] if len(options) == 1 else {"anyOf": options} if options else {}) | prop
    for name, description in files.items():
        properties[name] = {"type": "string", "format": "binary", "description": description}
    return {"type": "object", "properties": properties, "required": schema.get("required", [])}


def _body(model: type[BaseModel], form: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": REF.format(model=model.__name__)}},
        "multipart/form-data": {"schema": form},
    }}}


SUBMIT_BODY = _body(VideoCreateParams, _form_schema(
    VideoCreateParams, {"input_reference": "The I2V first frame (PNG, JPEG or WebP by default)."})) | IDEMPOTENT
_extend_form = _form_schema(ExtendParams, {"video": "A video to extend (mp4 or webm, within the upload limits): "
                                                    "it is resized to a size the model takes and keeps its frame "
                                                    "rate. Or give `video[id]`."})
_extend_form["properties"]["video[id]"] = {"type": "string", "description": "The completed video to extend."}
EXTEND_BODY = _body(ExtendParams, _extend_form) | IDEMPOTENT


def install_openapi(app: FastAPI) -> None:
    """Adds the hand-read bodies' models to the document's components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (VideoCreateParams, ExtendParams):
                model_schema = model.model_json_schema(ref_template=REF)
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
