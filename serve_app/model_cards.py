"""Each served model's recommended defaults and limits: what GET /v1/models shows and a submit falls back on.

A preset made for tests and CPUs (`tiny`) gets a small default video, so that leaving the fields out gives an
answer in seconds; real weights get the workload they were trained for.
"""

from __future__ import annotations

from serve_app.contract import ModelCard, ModelDefaults, ModelLimits, duration
from skyreels.models import TINY, ServedModel
from skyreels.request import MAX_FRAMES, MAX_SIZE, MAX_STEPS, MIN_SIZE, SIZE_MULTIPLE, GenerationRequest

_REQUEST = GenerationRequest.model_fields
_FPS = _REQUEST["fps"].default
_GUIDANCE = _REQUEST["guidance_scale"].default
REAL_DEFAULTS = ModelDefaults(size=f"{_REQUEST['width'].default}x{_REQUEST['height'].default}",
                              num_frames=_REQUEST["num_frames"].default,
                              num_inference_steps=_REQUEST["num_inference_steps"].default,
                              guidance_scale=_GUIDANCE, fps=_FPS,
                              seconds=duration(_REQUEST["num_frames"].default, _FPS))
TINY_DEFAULTS = ModelDefaults(size="64x64", num_frames=9, num_inference_steps=4, guidance_scale=_GUIDANCE, fps=_FPS,
                              seconds=duration(9, _FPS))
LIMITS = ModelLimits(min_size=MIN_SIZE, max_size=MAX_SIZE, size_multiple=SIZE_MULTIPLE, max_frames=MAX_FRAMES,
                     max_inference_steps=MAX_STEPS, max_seconds_at_default_fps=round(MAX_FRAMES / _FPS, 2))


def model_card(model: ServedModel) -> ModelCard:
    defaults = TINY_DEFAULTS if model.source == TINY else REAL_DEFAULTS
    return ModelCard(id=model.id, task=model.task, defaults=defaults, limits=LIMITS)
