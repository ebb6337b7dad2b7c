"""Importing diffusers asks CUDA nothing.

diffusers imports torchao when its models are imported (its torchao quantizer), and torchao asks CUDA while its
modules load: torch.cuda.is_available() (float8_utils, mx_formats.kernels; on a CUDA build it runs cudaGetDeviceCount,
which initialises the driver and poisons later forks) and torch.cuda.get_device_capability() through
is_sm_at_least_100() (torch's lazy CUDA init, on the current device). So every process that imported diffusers
initialised CUDA: the ingress and the CPU stages on a GPU they never use, a gang rank on device 0 before it set its
own device, and a process that forks afterwards left its children unable to use CUDA.

While this process has not initialised CUDA, each torchao module loads with torch.cuda.is_available() answering
False, so its import-time checks see no GPU. They decide only torchao's ROCm flags (False on a CUDA build either way)
and whether to register the MX-format (mxfp8) kernels of sm_100+ GPUs (Blackwell), which skyreels does not use (its
quantisation is float8 and int8). Once CUDA is initialised (a GPU process at work), torchao modules load unchanged.
`skyreels/__init__.py` installs it, so it holds in every process that imports skyreels before diffusers.
"""

from __future__ import annotations

import sys
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


def install() -> None:
    """Idempotent; cheap (imports nothing until torchao is imported)."""
    if not any(isinstance(finder, _TorchaoFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TorchaoFinder())


class _TorchaoFinder(MetaPathFinder):
    """Finds torchao's modules as the other finders do, with a loader that hides the GPU while CUDA is untouched."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "torchao" and not fullname.startswith("torchao."):
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if finder is not self and find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _WithoutGpuLoader(spec.loader)
                return spec
        return None


class _WithoutGpuLoader(Loader):
    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        import torch

        if torch.cuda.is_initialized():
            self._loader.exec_module(module)
            return
        is_available = torch.cuda.is_available
        torch.cuda.is_available = _no_gpu
        try:
            self._loader.exec_module(module)
        finally:
            torch.cuda.is_available = is_available

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, is_package, ...
        return getattr(self._loader, name)


def _no_gpu() -> bool:
    return False
