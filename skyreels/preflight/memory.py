"""What the real allocators would hold, counted from the tensors a fake-CUDA run makes.

Every op's outputs pass through `AllocationTracker`, which notes each new storage under its device with the size
the allocator would give it, and drops it when the storage is freed (a weak reference), so the live total and its
peak follow the run:

- CUDA (the caching allocator): each block rounded up to 512 bytes, as `torch.cuda.max_memory_allocated` counts.
- pinned host memory (the caching host allocator): each block rounded up to the next power of two.
- pageable host memory: exact.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

GiB = 1024**3
CUDA_BLOCK = 512  # the caching allocator's rounding (kMinBlockSize)
PINNED = "pinned"  # the key of pinned host memory, next to "cpu" (pageable) and "cuda:N"

aten = torch.ops.aten
_PIN_OPS = {aten._pin_memory.default, aten.pin_memory.default}


def cuda_block(nbytes: int) -> int:
    return -(-nbytes // CUDA_BLOCK) * CUDA_BLOCK


def pinned_block(nbytes: int) -> int:
    """The caching host allocator hands out power-of-two blocks."""
    return 1 << (nbytes - 1).bit_length() if nbytes > 0 else 0


def allocated_size(device: str, nbytes: int) -> int:
    if device.startswith("cuda"):
        return cuda_block(nbytes)
    if device == PINNED:
        return pinned_block(nbytes)
    return nbytes


@dataclass
class DeviceUsage:
    live: int = 0
    peak: int = 0

    def add(self, nbytes: int) -> None:
        self.live += nbytes
        self.peak = max(self.peak, self.live)


@dataclass
class AllocationTracker(TorchDispatchMode):
    """Counts live and peak bytes per device ("cuda:N", "cpu", "pinned") of the tensors made while it is on."""

    usage: dict[str, DeviceUsage] = field(default_factory=lambda: defaultdict(DeviceUsage))

    def __post_init__(self) -> None:
        super().__init__()
        self._seen: dict[int, weakref.finalize] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        pinned = func in _PIN_OPS or bool(kwargs.get("pin_memory"))
        if pinned:
            # the fake mode below has no pinned memory to give; it is ordinary host memory plus the flag
            kwargs.pop("pin_memory", None)
            if func in _PIN_OPS:
                func, args = aten.clone.default, args[:1]
        out = func(*args, **kwargs)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._note_all(tensor, pinned)
        return out

    def _note_all(self, tensor: torch.Tensor, pinned: bool) -> None:
        """A tensor subclass that wraps others (torchao's quantised weights) holds no storage of its own: its inner
        tensors (int8/fp8 data, scales) are what it holds. They are made while this mode is off (inside the op
        that returns the subclass), so they are found here."""
        if is_traceable_wrapper_subclass(tensor):
            for name in tensor.__tensor_flatten__()[0]:
                self._note_all(getattr(tensor, name), pinned)
        else:
            self._note(tensor, pinned)

    def _note(self, tensor: torch.Tensor, pinned: bool) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._seen and self._seen[key].alive:
            return
        device = PINNED if pinned else device_key(tensor.device)
        size = allocated_size(device, storage.nbytes())
        usage = self.usage[device]
        usage.add(size)
        self._seen[key] = weakref.finalize(storage, usage.add, -size)

    def peak(self, device: str) -> int:
        return self.usage[device].peak if device in self.usage else 0

    def live(self, device: str) -> int:
        return self.usage[device].live if device in self.usage else 0

    def reset_peaks(self) -> None:
        for usage in self.usage.values():
            usage.peak = usage.live


def device_key(device: torch.device) -> str:
    """"cpu" or "cuda:N" (the current device when the index is left out)."""
    if device.type != "cuda":
        return device.type
    return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
