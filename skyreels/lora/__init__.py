"""LoRA adapters per request: the request's spec (spec), where an adapter's file comes from (files), the check of an
adapter against a transformer before anything loads and the refusals under optimisations (check), and the adapters
loaded into a transformer (cache).

The spec loads with the request; the rest on first use, as in `skyreels` itself (the request and the CLI's
--help import this package; its other modules import the model sources, which import the request).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from skyreels.lora.spec import MAX_LORAS, AdapterError, LoraSpec

_HOMES = {
    "AdapterCache": "skyreels.lora.cache",
    "AdapterInfo": "skyreels.lora.check",
    "DEFAULT_CAPACITY": "skyreels.lora.cache",
    "check_adapters": "skyreels.lora.check",
    "inspect_adapter": "skyreels.lora.check",
    "resolve_adapter": "skyreels.lora.files",
    "unsupported_with": "skyreels.lora.check",
}

if TYPE_CHECKING:
    from skyreels.lora.cache import DEFAULT_CAPACITY, AdapterCache
    from skyreels.lora.check import AdapterInfo, check_adapters, inspect_adapter, unsupported_with
    from skyreels.lora.files import resolve_adapter

__all__ = sorted([*_HOMES, "AdapterError", "LoraSpec", "MAX_LORAS"])


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'skyreels.lora' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
