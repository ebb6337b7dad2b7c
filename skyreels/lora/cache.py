"""The LoRA adapters loaded into one transformer (PEFT layers, through diffusers), least recently used out first,
and the ones a request asks for switched on for its run only."""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from skyreels.lora.check import AdapterInfo, check_adapters
from skyreels.lora.files import read_adapter, resolve_adapter
from skyreels.lora.spec import LoraSpec
from skyreels.models import ModelSettings
from skyreels.optimize.config import OptimizeConfig

if TYPE_CHECKING:
    from diffusers import HunyuanVideoTransformer3DModel

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY = 4
# PEFT's notices about what we do on purpose: several adapters in one model; quantised base layers that it could not
# merge into (we never merge).
PEFT_NOTICES = ("Already found a `peft_config` attribute", "TorchaoLoraLinear was instantiated without")


class AdapterCache:
    """Adapters by file: loaded once, kept up to `capacity` (a request's own adapters are never evicted for each
    other), deleted from the model least recently used first."""

    def __init__(self, transformer: HunyuanVideoTransformer3DModel, capacity: int = DEFAULT_CAPACITY,
                 optimize: OptimizeConfig | None = None, settings: ModelSettings | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"the LoRA cache holds at least one adapter, not {capacity}")
        self.transformer = transformer
        self.capacity = capacity
        self.optimize = optimize or OptimizeConfig()
        self.settings = settings or ModelSettings()
        self._loaded: OrderedDict[str, Path] = OrderedDict()  # adapter name -> file, most recently used last
        self.hits = self.misses = 0  # adapters that `load` found loaded / had to load, since the cache was made

    @property
    def loaded(self) -> list[Path]:
        """The files loaded, least recently used first."""
        return list(self._loaded.values())

    def check(self, loras: Sequence[LoraSpec]) -> list[AdapterInfo]:
        """Refuses (AdapterError) adapters that could not run on this transformer, before anything is loaded."""
        return check_adapters(loras, self.transformer.config, self.optimize, self.settings)

    def load(self, loras: Sequence[LoraSpec]) -> float:
        """Loads the adapters of `loras` not loaded yet; returns the seconds spent (0.0 when all were loaded)."""
        start = time.perf_counter()
        self.check(loras)
        wanted = {self._name(lora): lora for lora in loras}
        new = [name for name in wanted if name not in self._loaded]
        self.hits += len(wanted) - len(new)
        self.misses += len(new)
        for name in wanted:
            if name in self._loaded:
                self._loaded.move_to_end(name)
        for name in new:
            self._make_room(keep=wanted.keys())
            self._load(name, resolve_adapter(wanted[name].source, self.settings))
        return time.perf_counter() - start if new else 0.0

    @contextmanager
    def applied(self, loras: Sequence[LoraSpec]) -> Iterator[None]:
        """`loras` at their scales for the block, and no adapter after it (also when the block is left early)."""
        if not loras:
            yield
            return
        self.transformer.set_adapters([self._name(lora) for lora in loras], [lora.scale for lora in loras])
        self.transformer.enable_lora()
        try:
            yield
        finally:
            self.transformer.disable_lora()

    def _name(self, lora: LoraSpec) -> str:
        """The adapter's name in the model: its file as it is now (a changed file is another adapter)."""
        path = resolve_adapter(lora.source, self.settings).resolve()
        return "lora_" + hashlib.sha256(f"{path}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:16]

    def _make_room(self, keep: Collection[str]) -> None:
        evictable = [name for name in self._loaded if name not in keep]
        for name in evictable[:max(0, len(self._loaded) + 1 - self.capacity)]:
            logger.info("LoRA %s leaves the cache", self._loaded.pop(name))
            self.transformer.delete_adapters(name)

    def _load(self, name: str, path: Path) -> None:
        state, metadata = read_adapter(path)  # checked by `load`
        # Made in inference mode, the layers would be inference tensors, whose requires_grad PEFT sets when it
        # switches adapters on: an error outside inference mode. The loader's caller may hold it (a gang rank).
        with warnings.catch_warnings(), torch.inference_mode(False):
            for notice in PEFT_NOTICES:
                warnings.filterwarnings("ignore", message=notice)
            self.transformer.load_lora_adapter(state, adapter_name=name, metadata=metadata)
        self._loaded[name] = path
        logger.info("LoRA %s loaded", path)
