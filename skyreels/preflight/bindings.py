"""The tensor methods that a CPU-only torch build cannot run on fake CUDA tensors, rewritten into aten ops.

`tensor[...]`, `tensor[...] = value`, `tensor.to(...)` / `.cuda()` / `.cpu()`, `.contiguous()`, `.copy_()`,
`int(tensor)` / `.item()`, `tensor.data = ...` and `torch.tensor(data, device="cuda")` are Python bindings written in
C++ that construct a CUDA device guard, which a torch build without CUDA cannot make ("PyTorch is not linked with
support for cuda devices"), even for fake tensors. Every other op reaches FakeTensorMode through the dispatcher,
which needs no guard. This mode rewrites those calls into the aten ops they stand for (select, slice, unsqueeze,
index, index_put_, _to_copy), so the models' own code runs on fake CUDA tensors as it would on CUDA.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.overrides import TorchFunctionMode

aten = torch.ops.aten
NO_CUDA = "not linked with support for cuda devices"
DATA_SETTER = torch.Tensor.data.__set__
SCALAR_READS = {torch.Tensor.item: lambda value: value, torch.Tensor.__int__: int, torch.Tensor.__index__: int,
                torch.Tensor.__float__: float, torch.Tensor.__bool__: bool}


class FakeCudaBindings(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__getitem__ and _is_cuda(args[0]):
            return index(args[0], args[1])
        if func is torch.Tensor.__setitem__ and _is_cuda(args[0]):
            assign(args[0], args[1], args[2])
            return None
        if func is torch.Tensor.to:
            return move(args[0], *args[1:], **kwargs)
        if func is torch.Tensor.cuda:
            return move(args[0], torch.device("cuda", torch.cuda.current_device()) if not args[1:] else args[1],
                        non_blocking=kwargs.get("non_blocking", False))
        if func is torch.Tensor.cpu:
            return move(args[0], "cpu")
        if func == DATA_SETTER:
            # the new data's device: a FakeTensor keeps its device in a Python attribute that set_data leaves as was
            func(*args, **kwargs)
            if isinstance(args[0], FakeTensor) and isinstance(args[1], FakeTensor):
                args[0].fake_device = args[1].fake_device
            return None
        if func in SCALAR_READS and isinstance(args[0], FakeTensor):
            return SCALAR_READS[func](aten._local_scalar_dense(args[0]))
        if func is torch.Tensor.contiguous and _is_cuda(args[0]):
            memory_format = args[1] if args[1:] else kwargs.get("memory_format", torch.contiguous_format)
            tensor = args[0]
            return tensor if tensor.is_contiguous(memory_format=memory_format) else aten.clone(
                tensor, memory_format=memory_format)
        if func in (torch.tensor, torch.as_tensor) and _is_cuda_device(kwargs.get("device")):
            # made from Python data on the host, then moved (the fake mode lifts host data only)
            return move(func(*args, **(kwargs | {"device": "cpu"})), kwargs["device"])
        try:
            return func(*args, **kwargs)
        except RuntimeError as error:
            # another binding with a device guard (Tensor.copy_, ...): the aten op of the same name has none
            op = getattr(aten, getattr(func, "__name__", ""), None)
            if NO_CUDA not in str(error) or op is None:
                raise
            return op(*args, **kwargs)


def _is_cuda_device(device: Any) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _is_cuda(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.device.type == "cuda"


def move(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Tensor.to's semantics: the tensor itself when nothing changes, else a copy."""
    copy = kwargs.pop("copy", False)
    device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args, **kwargs)
    if device is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    same_device = device is None or device == tensor.device
    same_dtype = dtype is None or dtype == tensor.dtype
    if same_device and same_dtype and not copy and memory_format is None:
        return tensor
    fake_mode = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)
    if fake_mode is not None and not isinstance(tensor, FakeTensor):
        tensor = fake_mode.from_tensor(tensor)  # host data the fake mode lifted as a real tensor
    if getattr(tensor, "constant", None) is not None:
        # the fake mode computes small constants for real, which a CPU-only build cannot do on CUDA
        tensor = aten.clone(tensor)
        tensor.constant = None
    # only what changes: a quantised weight (torchao) reads a dtype-less copy as a move, not a dequantisation
    changes = {"dtype": None if same_dtype else dtype, "device": None if same_device else device,
               "memory_format": memory_format}
    return aten._to_copy(tensor, non_blocking=non_blocking,
                         **{name: value for name, value in changes.items() if value is not None})


def _as_tuple(key: Any) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _is_advanced(item: Any) -> bool:
    return isinstance(item, (torch.Tensor, list))


def _basic(tensor: torch.Tensor, key: Any) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Applies the basic parts of `key` (ints, slices, None, Ellipsis) as views; returns the view and, per
    dimension of it, the advanced index (a tensor) that is left to apply, or None."""
    items = _as_tuple(key)
    consuming = sum(1 for item in items if item is not None and item is not Ellipsis and not isinstance(item, bool))
    view, dim = tensor, 0
    advanced: list[torch.Tensor | None] = []
    for item in items:
        if item is Ellipsis:
            skipped = tensor.dim() - consuming
            advanced.extend([None] * skipped)
            dim += skipped
        elif item is None:
            view = aten.unsqueeze(view, dim)
            advanced.append(None)
            dim += 1
        elif isinstance(item, bool):
            view = aten.unsqueeze(view, dim)
            advanced.append(torch.tensor([0] if item else [], dtype=torch.long, device=view.device))
            dim += 1
        elif isinstance(item, int) or (isinstance(item, torch.Tensor) and item.dim() == 0
                                       and not item.is_floating_point() and item.dtype != torch.bool):
            view = aten.select(view, dim, int(item))
        elif isinstance(item, slice):
            step = 1 if item.step is None else item.step
            view = aten.slice(view, dim, item.start, item.stop, step)
            advanced.append(None)
            dim += 1
        elif _is_advanced(item):
            index_tensor = move(torch.as_tensor(item) if isinstance(item, list) else item, view.device)
            advanced.append(index_tensor)
            dim += index_tensor.dim() if index_tensor.dtype == torch.bool else 1
        else:
            raise TypeError(f"unsupported index {item!r}")
    return view, advanced


def index(tensor: torch.Tensor, key: Any) -> torch.Tensor:
    view, advanced = _basic(tensor, key)
    if any(item is not None for item in advanced):
        return aten.index(view, advanced)
    return view


def assign(tensor: torch.Tensor, key: Any, value: Any) -> None:
    view, advanced = _basic(tensor, key)
    if not isinstance(value, torch.Tensor):
        value = move(torch.as_tensor(value, dtype=tensor.dtype), tensor.device)
    if any(item is not None for item in advanced):
        aten.index_put_(view, advanced, value)
    else:
        aten.copy_(view, value)
