"""One way to tell a caller which rules their input broke (CLI, HTTP bodies, job submits)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

# pydantic puts this before the message of every ValueError a validator raises; our messages stand alone.
VALUE_ERROR_PREFIX = "Value error, "


def describe_validation_error(error: ValidationError, rename: Mapping[str, str] | None = None) -> str:
    """'field: message' per broken rule, '; '-joined; `rename` maps field names to what the caller typed."""
    return describe_errors(error.errors(), rename)


def describe_errors(
    errors: Iterable[Mapping[str, Any]],
    rename: Mapping[str, str] | None = None,
    skip_loc: int = 0,
    whole: str = "request",
) -> str:
    """As describe_validation_error, for pydantic-style error dicts (e.g. FastAPI's RequestValidationError).

    skip_loc drops leading loc parts (FastAPI's "body"/"query"); whole names an error about no one field.
    """
    rename = rename or {}
    lines = []
    for item in errors:
        field = ".".join(str(part) for part in item["loc"][skip_loc:])
        lines.append(f"{rename.get(field, field) or whole}: {item['msg'].removeprefix(VALUE_ERROR_PREFIX)}")
    return "; ".join(lines)
