"""Fake CUDA on any torch build: FakeTensorMode for the tensors, a thin shim for the `torch.cuda` calls.

Inside `fake_cuda(...)` the project's own code runs unchanged on "cuda:N" tensors that hold no data: shapes,
dtypes and devices propagate exactly, and a tensor on the wrong device raises FakeTensorDeviceMismatchError where
CUDA would raise "Expected all tensors to be on the same device". The shim answers what a GPU process asks of
torch.cuda (availability, the current device, capability and properties of the GPU type, streams and events,
memory statistics from the allocation tracker) and the few reads of tensor data that fake tensors cannot answer:

- `.item()` and friends (aten._local_scalar_dense): a float reads 0.0 (the step cache's "changed by" reads as
  unchanged, so later steps are skipped as often as a cache can skip), an integer reads `int_answer` (the
  longest prompt of a batch: the full 256 tokens, the worst case), a bool reads False (a stop flag is clear;
  "every prompt is as long as the longest" is false, so the mask path runs);
- `.numpy()`: zeros of the tensor's shape and dtype (frames that are never looked at).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from skyreels.preflight.bindings import FakeCudaBindings
from skyreels.preflight.gpus import GpuType
from skyreels.preflight.memory import AllocationTracker

logger = logging.getLogger(__name__)

FAKE_CUDA_VERSION = "12.8"
PROMPT_TOKENS_READ = 256  # MAX_PROMPT_TOKENS: a prompt that fills the LLaMA window


@dataclass
class FakeCudaState:
    gpu: GpuType
    device_count: int
    tracker: AllocationTracker
    current: int = 0
    set_device_calls: list[int] = field(default_factory=list)
    streams_made: int = 0


class FakeStream:
    def __init__(self, state: FakeCudaState | None = None, *args: Any, **kwargs: Any) -> None:
        if state is not None:
            state.streams_made += 1
        self.device = torch.device("cuda", state.current if state is not None else 0)

    def wait_stream(self, stream: Any) -> None: ...

    def wait_event(self, event: Any) -> None: ...

    def synchronize(self) -> None: ...

    def query(self) -> bool:
        return True

    def record_event(self, event: Any = None) -> FakeEvent:
        return event or FakeEvent()

    def __enter__(self) -> FakeStream:
        return self

    def __exit__(self, *exc: Any) -> None: ...


class FakeEvent:
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...

    def record(self, stream: Any = None) -> None: ...

    def wait(self, stream: Any = None) -> None: ...

    def synchronize(self) -> None: ...

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


class DataReads(TorchDispatchMode):
    """Answers the reads of tensor data that a fake tensor cannot (see the module's docstring)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            tensor = args[0]
            constant = getattr(tensor, "constant", None)
            if constant is not None:
                return constant.item()
            if tensor.dtype == torch.bool:
                return False
            return 0.0 if tensor.is_floating_point() else PROMPT_TOKENS_READ
        if func is torch.ops.aten.record_stream.default:
            return None
        return func(*args, **(kwargs or {}))


NUMPY_DTYPES = {torch.uint8: np.uint8, torch.float16: np.float16, torch.float32: np.float32, torch.int32: np.int32,
                torch.int64: np.int64, torch.bool: np.bool_}


def _zeros_like_numpy(tensor: FakeTensor, *args: Any, **kwargs: Any) -> np.ndarray:
    return np.zeros(tuple(tensor.shape), dtype=NUMPY_DTYPES.get(tensor.dtype, np.float32))


def _cuda_patches(state: FakeCudaState) -> dict[str, Any]:
    gpu, tracker = state.gpu, state.tracker

    def index(device: Any = None) -> int:
        if device is None:
            return state.current
        if isinstance(device, int):
            return device
        device = torch.device(device)
        return device.index if device.index is not None else state.current

    def set_device(device: Any) -> None:
        state.current = index(device)
        state.set_device_calls.append(state.current)

    def properties(device: Any = None) -> SimpleNamespace:
        return SimpleNamespace(name=gpu.name, total_memory=gpu.memory_bytes, major=gpu.capability[0],
                               minor=gpu.capability[1], multi_processor_count=132, is_integrated=False)

    def key(device: Any = None) -> str:
        return f"cuda:{index(device)}"

    return dict(
        is_available=lambda: True,
        is_initialized=lambda: True,
        _lazy_init=lambda: None,
        device_count=lambda: state.device_count,
        current_device=lambda: state.current,
        set_device=set_device,
        get_device_capability=lambda device=None: gpu.capability,
        get_device_properties=properties,
        get_device_name=lambda device=None: gpu.name,
        is_bf16_supported=lambda *args, **kwargs: True,
        synchronize=lambda device=None: None,
        empty_cache=lambda: None,
        ipc_collect=lambda: None,
        memory_allocated=lambda device=None: tracker.live(key(device)),
        max_memory_allocated=lambda device=None: tracker.peak(key(device)),
        memory_reserved=lambda device=None: tracker.live(key(device)),
        max_memory_reserved=lambda device=None: tracker.peak(key(device)),
        reset_peak_memory_stats=lambda device=None: tracker.reset_peaks(),
        mem_get_info=lambda device=None: (gpu.memory_bytes - tracker.live(key(device)), gpu.memory_bytes),
        Stream=lambda *args, **kwargs: FakeStream(state),
        Event=FakeEvent,
        current_stream=lambda device=None: FakeStream(),
        default_stream=lambda device=None: FakeStream(),
        stream=lambda stream=None: nullcontext(stream),
        device=lambda device=None: nullcontext(),
    )


_swap_tensors = torch.utils.swap_tensors


def _swap_forgetting_conversions(t1: torch.Tensor, t2: torch.Tensor) -> None:
    """Module.to swaps each fake parameter for its moved copy (torch.utils.swap_tensors), which refuses a tensor
    that something holds a weak reference to; the fake mode's memos of converted tensors hold some (to the new
    nn.Parameter, to a quantised weight). Dropping them first (caches: entries are remade when needed) lets the
    swap happen."""
    fake_mode = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)
    if fake_mode is not None:
        converter = fake_mode.fake_tensor_converter.meta_converter
        converter.tensor_memo.clear()
        converter.describer.lookup_tensor.clear()  # keyed by weak references to the tensors it described
    _swap_tensors(t1, t2)


@contextmanager
def fake_cuda(gpu: GpuType, device_count: int = 1) -> Iterator[FakeCudaState]:
    """Fake CUDA devices of type `gpu` for the block; the state holds the allocation tracker."""
    state = FakeCudaState(gpu=gpu, device_count=device_count, tracker=AllocationTracker())
    with ExitStack() as stack:
        for name, value in _cuda_patches(state).items():
            stack.enter_context(mock.patch.object(torch.cuda, name, value, create=True))
        stack.enter_context(mock.patch.object(torch.version, "cuda", FAKE_CUDA_VERSION))  # libraries' CUDA checks
        stack.enter_context(mock.patch.object(FakeTensor, "numpy", _zeros_like_numpy))
        stack.enter_context(mock.patch.object(torch.utils, "swap_tensors", _swap_forgetting_conversions))
        stack.enter_context(torch.no_grad())  # autograd on fake CUDA tensors aborts a CPU-only build; nothing trains
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        stack.enter_context(FakeCudaBindings())
        stack.enter_context(state.tracker)
        stack.enter_context(DataReads())
        yield state
