"""What an adapter changes and whether it fits a transformer, known before anything is loaded: every LoRA layer's
shapes against the module it targets, on a model built on the meta device from the transformer's config (no
weights). Cached by file and config, so that a service can check every submitted request."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyreels.lora.files import read_adapter, resolve_adapter
from skyreels.lora.spec import AdapterError, LoraSpec
from skyreels.models import ModelSettings
from skyreels.optimize.config import OptimizeConfig

PREFIX = "transformer."  # diffusers' HunyuanVideo loader takes the transformer's layers under this prefix
LAYER_PARTS = ("lora_A.weight", "lora_B.weight", "lora_B.bias")  # lora_B.bias: PEFT's lora_bias


@dataclass(frozen=True)
class AdapterInfo:
    source: str
    path: Path  # the local file, absolute
    rank: int  # the largest rank of its layers
    targets: tuple[str, ...]  # the transformer modules it changes
    parameters: int
    size_bytes: int


@dataclass(frozen=True)
class ModuleShape:
    inputs: int
    outputs: int
    kernel: tuple[int, ...]  # () for a Linear


def unsupported_with(optimize: OptimizeConfig) -> str | None:
    """Why LoRA adapters cannot run under `optimize`, or None when they can (README: LoRA adapters)."""
    if optimize.block_offload:
        return ("LoRA adapters cannot run with block offload (--parameters_level): the streamed blocks move a fixed "
                "list of tensors, which the adapters' layers are not in; use model offload (--offload)")
    if optimize.quant == "fp8-dynamic":
        return ("LoRA adapters are not supported with quant fp8-dynamic (not verified: it needs fp8 tensor cores); "
                "use the weight-only fp8 or int8")
    return None


def check_adapters(loras: Sequence[LoraSpec], transformer_config: Mapping[str, Any], optimize: OptimizeConfig,
                   settings: ModelSettings | None = None) -> list[AdapterInfo]:
    """Refuses, with the reason, the adapters of a request that could not run; else says what each one is."""
    if not loras:
        return []
    if (reason := unsupported_with(optimize)) is not None:
        raise AdapterError(reason)
    infos = [inspect_adapter(lora.source, transformer_config, settings) for lora in loras]
    paths = [info.path for info in infos]
    if len(set(paths)) < len(paths):
        raise AdapterError(f"the same LoRA file twice in one request: {[str(p) for p in paths]}")
    return infos


def inspect_adapter(source: str, transformer_config: Mapping[str, Any],
                    settings: ModelSettings | None = None) -> AdapterInfo:
    """Resolves `source` (downloading a URL or Hub id once) and checks it against a transformer of that config;
    raises AdapterError with the reason when it is not a LoRA or does not fit."""
    path = resolve_adapter(source, settings).resolve()
    stat = path.stat()
    rank, targets, parameters = _inspect_file(str(path), stat.st_mtime_ns, _config_key(transformer_config))
    return AdapterInfo(source=source, path=path, rank=rank, targets=targets, parameters=parameters,
                       size_bytes=stat.st_size)


def check_layers(state: Mapping[str, Any], transformer_config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The transformer's LoRA layers of `state` (prefix removed, PEFT key names), each checked against the module it
    targets. `name` names the adapter in the errors."""
    if not state:
        raise AdapterError(f"LoRA {name} holds no tensors")
    not_lora = [key for key in state if "lora" not in key]
    if not_lora:
        raise AdapterError(f"{name} is not a LoRA file: {len(not_lora)} of its {len(state)} tensors are not LoRA "
                           f"layers (e.g. {not_lora[0]!r})")
    layers = {key.removeprefix(PREFIX): value for key, value in state.items() if key.startswith(PREFIX)}
    if not layers:
        raise AdapterError(f"LoRA {name} has no layers for the transformer (keys under {PREFIX!r}; its first key is "
                           f"{next(iter(state))!r})")
    modules = _module_shapes(_config_key(transformer_config))
    for key, tensor in layers.items():
        _check_layer(key, tuple(tensor.shape), layers, modules, name)
    return layers


def _check_layer(key: str, shape: tuple[int, ...], layers: Mapping[str, Any], modules: Mapping[str, ModuleShape],
                 name: str) -> None:
    module, _, part = key.partition(".lora_")
    if f"lora_{part}" not in LAYER_PARTS:
        raise AdapterError(f"LoRA {name}: {key!r} is not a LoRA layer this loader takes ({', '.join(LAYER_PARTS)})")
    if module not in modules:
        raise AdapterError(f"LoRA {name}: {key!r} targets {module!r}, which is not a linear or convolution of this "
                           "transformer (a LoRA for another model?)")
    target = modules[module]
    rank = tuple(layers[f"{module}.lora_A.weight"].shape)[0] if f"{module}.lora_A.weight" in layers else None
    if rank is None or f"{module}.lora_B.weight" not in layers:
        raise AdapterError(f"LoRA {name}: {module!r} lacks its lora_A or lora_B weight")
    ones = (1,) * len(target.kernel)
    expected = {"A.weight": (rank, target.inputs, *target.kernel), "B.weight": (target.outputs, rank, *ones),
                "B.bias": (target.outputs,)}[part]
    if shape != expected:
        raise AdapterError(f"LoRA {name} does not fit this transformer (made for another model?): {key} has shape "
                           f"{shape}, {module} needs {expected}")


@functools.lru_cache(maxsize=256)
def _inspect_file(path: str, mtime_ns: int, config_key: str) -> tuple[int, tuple[str, ...], int]:
    """rank, targets and parameters of the file at `path` as it was at `mtime_ns`, checked against the config."""
    state, _ = read_adapter(Path(path))
    layers = check_layers(state, json.loads(config_key), path)
    targets = tuple(sorted({key.partition(".lora_")[0] for key in layers}))
    rank = max(tensor.shape[0] for key, tensor in layers.items() if key.endswith("lora_A.weight"))
    return rank, targets, sum(tensor.numel() for tensor in layers.values())


def _config_key(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config), sort_keys=True, default=str)


@functools.lru_cache(maxsize=8)
def _module_shapes(config_key: str) -> dict[str, ModuleShape]:
    """The linears and convolutions of a transformer of this config, from a model on the meta device."""
    import torch
    from diffusers import HunyuanVideoTransformer3DModel

    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel.from_config(json.loads(config_key))
    shapes = {}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[module_name] = ModuleShape(module.in_features, module.out_features, ())
        elif isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            shapes[module_name] = ModuleShape(module.in_channels, module.out_channels, tuple(module.kernel_size))
    return shapes
