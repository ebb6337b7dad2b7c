"""The host-side bank of a gang rank's transformers: every served model's weights in host memory (pinned when the
device is a GPU), exactly one set in the device transformer, swapped in place when a job needs another model.

In place: the module objects stay, so whatever hangs on them stays valid (the mesh's attention processors, the
compiled block graphs, the step cache's hooks, PEFT's LoRA layers); only the tensors' contents change. A tensor
whose shape differs between the models (the I2V input projection takes the image latents too) is replaced, with
the config entries that describe it.

Names are mapped around PEFT: a LoRA layer renames `to_q.weight` to `to_q.base_layer.weight` and adds its own
`lora_*` tensors, which the bank leaves alone, so adapters stay loaded across swaps (they target the attention and
MLP linears, which the T2V and I2V models share).

Quantised (torchao) weights are tensor subclasses: the bank keeps them quantised on the host (each inner tensor,
the int8/fp8 data and the scales, copied or pinned) and torchao's copy_ puts them in place, inner tensor by inner
tensor: no re-quantisation per swap.

Pinned host memory comes from torch's caching host allocator, which rounds every block up to a power of two
(torch 2.13: every block up to `pinned_max_round_threshold`, unlimited by default): pinning each of a model's ~1,000
tensors on its own holds about 1.5x their size (25.6 GB of bf16 DiT took ~40 GB). The bank packs a model's tensors
into slabs of at most PINNED_SLAB_BYTES whose sizes are powers of two, the tensors views into them, so the rounding
adds nothing; `pinned_footprint` gives what that holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from skyreels.request import Task

logger = logging.getLogger(__name__)

PEFT_WRAPPER = "base_layer"  # the module PEFT puts the original layer under
PEFT_OWN = "lora_"  # PEFT's adapter modules and parameters: lora_A, lora_B, lora_magnitude_vector, ...
PINNED_SLAB_BYTES = 256 * 2**20  # the largest slab of pinned host memory (the DiT's largest tensor is 94 MB)
PINNED_ALIGNMENT = 512  # bytes; every tensor in a slab starts at a multiple (any dtype's alignment, DMA-friendly)


def pinned_footprint(nbytes: Iterable[int]) -> int:
    """The pinned host bytes the bank holds for one model whose dense tensors have these sizes in bytes (a quantised
    weight counts as its inner tensors: data and scales), with torch's caching host allocator's rounding.

    The bank packs the tensors (largest first, first fit, each at a multiple of PINNED_ALIGNMENT) into slabs of
    PINNED_SLAB_BYTES; the last slabs shrink to the smallest power of two that holds what they got, and a tensor
    larger than a slab gets a slab of its own, the power of two above it. A bank of several models (T2V and I2V)
    holds the sum over its models.

    For comparison, what diffusers' group offloading (skyreels.optimize.offload.stream_blocks) pins, tensor by
    tensor, each block rounded up to a power of two (sum of 2**ceil(log2(nbytes)) over the tensors):
    - keep_pinned (--high_cpu_memory; low_cpu_mem_usage=False): every parameter and buffer of the transformer is
      pinned once, when the offloading is applied, and stays pinned: the per-tensor sum over the whole model, about
      1.5x its size, on top of nothing else (the model's own pageable tensors are the ones copied).
    - otherwise (low_cpu_mem_usage=True): the host copies stay pageable and each group's (one block's) tensors are
      pinned at its onload and freed after it; the allocator caches the freed blocks and reuses them by their
      power-of-two size, so what stays pinned is about the per-tensor sum of the two largest blocks (the one
      computing and the one prefetched), a few hundred MB for the DiT, plus pageable memory for the whole model.
    """
    return sum(size for size, _placed in _pack_slabs(list(nbytes)))


def _pack_slabs(nbytes: list[int]) -> list[tuple[int, list[tuple[int, int]]]]:
    """Slabs for tensors of these sizes: (slab bytes, [(tensor index, byte offset)]); every slab a power of two."""
    slabs: list[tuple[int, list[tuple[int, int]]]] = []
    open_slabs: list[list] = []  # [used bytes, placed]
    for index in sorted(range(len(nbytes)), key=lambda i: -nbytes[i]):
        size = -(-nbytes[index] // PINNED_ALIGNMENT) * PINNED_ALIGNMENT
        if size > PINNED_SLAB_BYTES:
            slabs.append((_power_of_two_above(size), [(index, 0)]))
            continue
        slab = next((slab for slab in open_slabs if slab[0] + size <= PINNED_SLAB_BYTES), None)
        if slab is None:
            slab = [0, []]
            open_slabs.append(slab)
        slab[1].append((index, slab[0]))
        slab[0] += size
    return slabs + [(_power_of_two_above(used), placed) for used, placed in open_slabs]


def _power_of_two_above(size: int) -> int:
    return 1 << max(size - 1, 0).bit_length()


class WeightBank(Protocol):
    """Puts a served model's weights where the rank's denoise stage for it runs them."""

    def activate(self, task: Task) -> float:
        """Puts `task`'s weights in place; the seconds it took, 0.0 when they were already there."""
        ...


class StreamedWeights:
    """Block offload: each served model has its own stage, whose blocks stream from its own host weights one at a
    time, so the device never holds a whole set and there is nothing to swap."""

    def __init__(self, served: tuple[Task, ...]) -> None:
        self.served = served

    def activate(self, task: Task) -> float:
        check_served(task, self.served)
        return 0.0


@dataclass(frozen=True)
class HostWeights:
    """One model's tensors in host memory, by name without PEFT's wrapping, and its config."""

    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(tensor) for tensor in self.tensors.values())


@dataclass(frozen=True)
class _Slot:
    """Where a tensor of the device transformer lives: `module._parameters[key]` or `module._buffers[key]`."""

    module: nn.Module
    key: str
    is_parameter: bool
    wrapped: bool  # inside a PEFT layer

    @property
    def tensor(self) -> torch.Tensor:
        return (self.module._parameters if self.is_parameter else self.module._buffers)[self.key]


class TransformerBank:
    """The served transformers of one rank; `transformer` (the stage's, on the device) holds `active`'s weights."""

    def __init__(self, transformer: nn.Module, active: Task, host: Mapping[Task, HostWeights]) -> None:
        self.transformer = transformer
        self._active: Task | None = active
        self.host = dict(host)
        self.tasks = tuple(self.host) or (active,)
        expected = set(_slots(transformer))
        for task, weights in self.host.items():
            if set(weights.tensors) != expected:
                raise ValueError(f"the {task.value} transformer's tensors differ from the {active.value} one's by "
                                 f"name ({_differences(expected, set(weights.tensors))}); a gang swaps only models "
                                 "of one architecture")

    @classmethod
    def load(cls, transformer: nn.Module, active: Task, others: Mapping[Task, nn.Module],
             pin: bool | None = None) -> TransformerBank:
        """A bank over `transformer` (holding `active`'s weights) and `others`' models, in host memory, in the form
        the device transformer holds its weights (dtype, quantisation). With no other model nothing is copied.

        pin: page-locked host copies for fast, asynchronous copies to the GPU; default: when the device is cuda.
        """
        if not others:
            return cls(transformer, active, {})
        if pin is None:
            pin = _device(transformer).type == "cuda"
        host = {active: _host_weights(transformer, pin, owned=False)}
        host |= {task: _host_weights(model, pin, owned=True) for task, model in others.items()}
        bank = cls(transformer, active, host)
        logger.info("weight bank: %s in host memory (%.2f GB, pinned: %s), %s on %s",
                    ", ".join(task.value for task in host), bank.host_bytes / 1e9, pin, active.value,
                    _device(transformer))
        return bank

    @property
    def active(self) -> Task | None:
        return self._active

    @property
    def host_bytes(self) -> int:
        return sum(weights.nbytes for weights in self.host.values())

    @torch.no_grad()
    def activate(self, task: Task) -> float:
        if task is self._active:
            return 0.0
        check_served(task, self.tasks)
        start = time.perf_counter()
        weights = self.host[task]
        self._active = None  # until every tensor is in place: a swap cut short is redone, not trusted
        device = _device(self.transformer)
        if any(getattr(module, "merged", False) for module in self.transformer.modules()
               if hasattr(module, PEFT_WRAPPER)):
            raise RuntimeError("a LoRA adapter is merged into the base weights, which a swap would overwrite: "
                               "unmerge it first")
        slots = _slots(self.transformer)
        if set(slots) != set(weights.tensors):
            raise RuntimeError(f"the transformer's tensors changed since the bank was built "
                               f"({_differences(set(slots), set(weights.tensors))})")
        for name, slot in slots.items():
            _put(slot, weights.tensors[name], name)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the copies are asynchronous from pinned memory
        changed = {key: value for key, value in weights.config.items() if self.transformer.config.get(key) != value}
        if changed:
            self.transformer.register_to_config(**changed)
        self._active = task
        seconds = time.perf_counter() - start
        logger.info("swapped the transformer's weights to %s in %.3f s (%.2f GB)", task.value, seconds,
                    weights.nbytes / 1e9)
        return seconds


def check_served(task: Task, served: tuple[Task, ...]) -> None:
    if task not in served:
        raise ValueError(f"this gang serves {', '.join(t.value for t in served)}, not {task.value}")


def _slots(transformer: nn.Module) -> dict[str, _Slot]:
    """The transformer's own tensors by name without PEFT's wrapping; PEFT's adapter tensors left out."""
    slots = {}
    for module_name, module in transformer.named_modules():
        parts = module_name.split(".") if module_name else []
        if any(part.startswith(PEFT_OWN) for part in parts):
            continue
        owner = [part for part in parts if part != PEFT_WRAPPER]
        for is_parameter, table in ((True, module._parameters), (False, module._buffers)):
            for key, tensor in table.items():
                if tensor is not None and not key.startswith(PEFT_OWN):
                    slots[".".join([*owner, key])] = _Slot(module, key, is_parameter, PEFT_WRAPPER in parts)
    return slots


def _host_weights(model: nn.Module, pin: bool, owned: bool) -> HostWeights:
    """owned: `model` is a host model made for the bank, whose unpinned tensors may be kept as they are."""
    tensors = {name: slot.tensor.detach() for name, slot in _slots(model).items()}
    leaves = [leaf for tensor in tensors.values() for leaf in _leaves(tensor)]
    if pin or not owned or any(leaf.device.type != "cpu" for leaf in leaves):
        copies = iter(_slab_copies(leaves, pin))
        tensors = {name: _rebuild(tensor, copies) for name, tensor in tensors.items()}
    config = {key: value for key, value in dict(model.config).items() if not key.startswith("_")}
    return HostWeights(tensors, config)


def _leaves(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The dense tensors of `tensor`: itself, or a quantised weight's inner tensors (data, scales)."""
    if is_traceable_wrapper_subclass(tensor):
        return [leaf for name in tensor.__tensor_flatten__()[0] for leaf in _leaves(getattr(tensor, name))]
    return [tensor]


def _rebuild(tensor: torch.Tensor, copies: Iterator[torch.Tensor]) -> torch.Tensor:
    """`tensor` made of the next of `copies` (in the order of `_leaves`); a quantised weight stays quantised."""
    if is_traceable_wrapper_subclass(tensor):
        names, meta = tensor.__tensor_flatten__()
        inner = {name: _rebuild(getattr(tensor, name), copies) for name in names}
        return type(tensor).__tensor_unflatten__(inner, meta, tensor.size(), tensor.stride())
    return next(copies)


def _slab_copies(tensors: list[torch.Tensor], pin: bool) -> list[torch.Tensor]:
    """Host copies of `tensors` (same shapes, strides and values), views into slabs laid out by `_pack_slabs`."""
    spans = [_span_bytes(tensor) for tensor in tensors]
    copies: list[torch.Tensor | None] = [None] * len(tensors)
    for size, placed in _pack_slabs(spans):
        slab = torch.empty(size, dtype=torch.uint8, pin_memory=pin)
        for index, offset in placed:
            tensor = tensors[index]
            elements = slab[offset:offset + spans[index]].view(tensor.dtype)
            copy = elements.as_strided(tensor.size(), tensor.stride())
            copy.copy_(tensor)
            copies[index] = copy
    return copies


def _span_bytes(tensor: torch.Tensor) -> int:
    """The bytes of storage `tensor`'s elements span, whatever its strides."""
    if tensor.numel() == 0:
        return 0
    return (1 + sum((size - 1) * stride for size, stride in zip(tensor.size(), tensor.stride()))) * tensor.element_size()


def _put(slot: _Slot, host: torch.Tensor, name: str) -> None:
    """Copies `host` into the slot's tensor, or replaces the tensor where the shapes differ."""
    current = slot.tensor
    if current.shape == host.shape:
        current.copy_(host, non_blocking=True)  # a torchao tensor copies its inner tensors, if quantised alike
        return
    if slot.wrapped:
        raise RuntimeError(f"{name} differs in shape between the served models and a LoRA adapter wraps it; "
                           "an adapter for the input projection fits one model only")
    replacement = host.to(current.device, copy=True)  # never the host copy itself (on a CPU rank)
    if slot.is_parameter:
        slot.module._parameters[slot.key] = nn.Parameter(replacement, requires_grad=False)
    else:
        slot.module._buffers[slot.key] = replacement
    _fit_layer(slot.module)


def _fit_layer(module: nn.Module) -> None:
    """A layer's size attributes after its weight was replaced by one of another shape."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups


def _differences(expected: set[str], found: set[str], shown: int = 5) -> str:
    missing, extra = sorted(expected - found)[:shown], sorted(found - expected)[:shown]
    return f"missing {missing}, extra {extra}"


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _nbytes(tensor: torch.Tensor) -> int:
    if is_traceable_wrapper_subclass(tensor):
        return sum(_nbytes(getattr(tensor, name)) for name in tensor.__tensor_flatten__()[0])
    return tensor.numel() * tensor.element_size()

