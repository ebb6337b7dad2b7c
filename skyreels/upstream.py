"""The one seam to diffusers' internals: every private name we rely on, checked against the tested versions.

We keep diffusers' models and hooks unmodified, but a few of our pieces reach past its public API:
the mask-free joint attention (its attention dispatch, rotary embedding and the structure of
`HunyuanVideoTransformer3DModel.forward`, which `skyreels.parallel.joint_attention` restates), the
gang-wide First-Block cache (its hook classes, registry attribute and leader-hook name), the
attention-backend requirement check and the prompt template. They move between diffusers releases,
so importing this module outside `TESTED_DIFFUSERS` fails at once, with the range, instead of
failing deep inside a forward.
"""

from __future__ import annotations

from typing import Any

import diffusers
from packaging.specifiers import SpecifierSet
from packaging.version import Version

TESTED_DIFFUSERS = SpecifierSet(">=0.42.1,<0.43")

if Version(diffusers.__version__) not in TESTED_DIFFUSERS:
    raise ImportError(
        f"skyreels relies on diffusers internals tested with diffusers{TESTED_DIFFUSERS}; diffusers "
        f"{diffusers.__version__} is installed. Install a tested version (pip install 'diffusers{TESTED_DIFFUSERS}')."
    )

# ruff: noqa: E402 - the version is checked before the private names are imported
from diffusers.hooks import FirstBlockCacheConfig, HookRegistry
from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK as FBC_LEADER_HOOK
from diffusers.hooks.first_block_cache import FBCHeadBlockHook
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from diffusers.models.attention_dispatch import _check_attention_backend_requirements
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

# the attribute under which diffusers keeps a module's HookRegistry
_HOOK_REGISTRY_ATTRIBUTE = "_diffusers_hook"


def check_attention_backend(backend: str) -> None:
    """Raises RuntimeError with diffusers' reason when `backend`'s package or its version is missing."""
    _check_attention_backend_requirements(AttentionBackendName(backend))


def hook_registry(module: Any) -> HookRegistry | None:
    return getattr(module, _HOOK_REGISTRY_ATTRIBUTE, None)


def hook_argument(hook: Any, name: str, args: tuple, kwargs: dict) -> Any:
    """The argument `name` of the call a diffusers ModelHook intercepts, positional or keyword."""
    return hook._metadata._get_parameter_from_args_kwargs(name, args, kwargs)


def reset_step_cache(transformer: Any) -> None:
    """Forgets the step cache's history (the previous video's residuals)."""
    transformer._reset_stateful_cache()


__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "FBC_LEADER_HOOK",
    "FBCHeadBlockHook",
    "FirstBlockCacheConfig",
    "HookRegistry",
    "TESTED_DIFFUSERS",
    "Transformer2DModelOutput",
    "apply_rotary_emb",
    "check_attention_backend",
    "dispatch_attention_fn",
    "hook_argument",
    "hook_registry",
    "reset_step_cache",
]
