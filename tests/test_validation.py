from __future__ import annotations

import pytest
from pydantic import ValidationError

from skyreels.request import GenerationRequest
from skyreels.validation import describe_errors, describe_validation_error


def _refusal(**fields) -> ValidationError:
    with pytest.raises(ValidationError) as refused:
        GenerationRequest(**fields)
    return refused.value


def test_one_line_per_broken_rule_without_pydantic_prefix() -> None:
    error = _refusal(prompt="x", height=70, num_inference_steps=0)
    assert describe_validation_error(error) == (
        "height: height must be a multiple of 16 between 64 and 1280, got 70; "
        "num_inference_steps: Input should be greater than or equal to 1"
    )


def test_fields_renamed_to_what_the_caller_typed_and_whole_request_errors_named() -> None:
    error = _refusal(prompt="x", task="i2v", height=70)
    assert describe_validation_error(error, rename={"height": "size"}) == (
        "size: height must be a multiple of 16 between 64 and 1280, got 70"
    )
    assert describe_validation_error(_refusal(prompt="x", task="i2v")) == (
        "request: task i2v requires an image (the first frame to animate)"
    )


def test_fastapi_style_errors_drop_their_source_prefix() -> None:
    errors = [
        {"loc": ("body", "seed"), "msg": "Value error, seed must be -1 or between 0 and 4294967295"},
        {"loc": ("query", "limit"), "msg": "Input should be a valid integer"},
        {"loc": ("body",), "msg": "Field required"},
    ]
    assert describe_errors(errors, skip_loc=1, whole="body") == (
        "seed: seed must be -1 or between 0 and 4294967295; "
        "limit: Input should be a valid integer; body: Field required"
    )
