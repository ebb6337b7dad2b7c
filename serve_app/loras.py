"""The server's LoRA adapters: the .safetensors files under one directory or fsspec URL (AppConfig.lora_url),
which clients name in a submit's `loras`. Clients never give a path: the server reads only its own registry.

An adapter's name is its path under the registry without `.safetensors` (`styles/anime`), or the folder of a
diffusers-saved adapter (`styles/anime` for `styles/anime/pytorch_lora_weights.safetensors`). Every adapter is
checked against each served model's DiT (skyreels.lora.inspect_adapter: its format and its shapes) once per
version of the file, so a submit is refused at once, with the reason, for an adapter that cannot run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field

from skyreels.lora import MAX_LORAS, AdapterError, AdapterInfo, LoraSpec, inspect_adapter
from skyreels.loader import stage_loader
from skyreels.models import ServedModel

logger = logging.getLogger(__name__)

SUFFIX = ".safetensors"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$"
INPUT_PROJECTION = "x_embedder"
RESCAN_S = 10.0  # a listing older than this is read again; an unknown name always is


class LoraRef(BaseModel):
    """An adapter a submit asks for: one of GET /v1/loras, at a strength."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="An adapter id of GET /v1/loras.")
    scale: float = LoraSpec.model_fields["scale"]  # the library's bounds and default


class AppliedLora(LoraRef):
    """An adapter as the job records it: with where the server read it, so that a re-run uses the same file."""

    source: str = Field(description="The adapter's URL in the registry (the server's, not shown to clients).")

    @property
    def spec(self) -> LoraSpec:
        return LoraSpec(source=self.source, scale=self.scale)


class AdapterCard(BaseModel):
    id: str = Field(description="The name a submit gives in `loras`.")
    object: Literal["lora"] = "lora"
    models: list[str] = Field(description="The served models it applies to.")
    rank: int = Field(description="The LoRA rank (the largest, if its layers differ).")
    size_bytes: int
    problem: str | None = Field(None, description="Why no served model can use it (its models are then empty).")


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterCard]


class AdapterRefused(ValueError):
    """A submit's `loras` cannot run: an unknown name, too many, or an adapter that does not fit the model."""


@dataclass(frozen=True)
class _Entry:
    name: str
    url: str
    version: tuple[Any, ...]  # size and modification time (or ETag): a changed file is checked again
    size_bytes: int


class AdapterRegistry:
    """The adapters under `url` (None: the server has none), checked against `served_models`' DiTs."""

    def __init__(self, url: str | None, served_models: list[ServedModel],
                 transformer_config: Callable[[ServedModel], dict] = lambda model: stage_loader(
                     model.source, model.task).transformer_config()) -> None:
        self.url = url.rstrip("/") if url else None
        self.served_models = served_models
        self._transformer_config = transformer_config
        self._configs: dict[str, dict] = {}
        self._entries: dict[str, _Entry] = {}
        self._scanned_at = float("-inf")
        self._checks: dict[tuple[str, tuple[Any, ...], str], AdapterCard | str] = {}  # (url, version, model)
        self._lock = threading.Lock()

    def cards(self) -> list[AdapterCard]:
        """Every adapter of the registry, with the served models it fits. Reads files: call it off the loop."""
        entries = self._scan(force=False)
        return [self._card(entry) for entry in sorted(entries.values(), key=lambda entry: entry.name)]

    def resolve(self, refs: list[LoraRef], model: ServedModel) -> list[AppliedLora]:
        """The adapters `refs` name, checked against `model`; AdapterRefused with the reason otherwise."""
        if not refs:
            return []
        if len(refs) > MAX_LORAS:
            raise AdapterRefused(f"loras: at most {MAX_LORAS} adapters per video, got {len(refs)}")
        if len({ref.name for ref in refs}) != len(refs):
            raise AdapterRefused("loras: each adapter may be named once")
        if self.url is None:
            raise AdapterRefused("loras: this server has no LoRA adapters (no lora_url configured)")
        entries = self._scan(force=False)
        if any(ref.name not in entries for ref in refs):
            entries = self._scan(force=True)  # added since the last listing
        applied = []
        for ref in refs:
            entry = entries.get(ref.name)
            if entry is None:
                known = ", ".join(sorted(entries)[:20]) or "none"
                raise AdapterRefused(f"loras: no adapter named {ref.name!r}; available (GET /v1/loras): {known}")
            problem = self._check(entry, model)
            if isinstance(problem, str):
                raise AdapterRefused(f"loras: adapter {ref.name!r} cannot run on {model.id}: {problem}")
            applied.append(AppliedLora(name=ref.name, scale=ref.scale, source=entry.url))
        return applied

    def _card(self, entry: _Entry) -> AdapterCard:
        checks = {model.id: self._check(entry, model) for model in self.served_models}
        fits = {model_id: card for model_id, card in checks.items() if isinstance(card, AdapterCard)}
        if fits:
            return next(iter(fits.values())).model_copy(update={"models": list(fits)})
        problems = sorted({problem for problem in checks.values() if isinstance(problem, str)})
        return AdapterCard(id=entry.name, models=[], rank=0, size_bytes=entry.size_bytes, problem="; ".join(problems))

    def _check(self, entry: _Entry, model: ServedModel) -> AdapterCard | str:
        """The adapter's card for `model`, or why it does not fit; once per version of the file."""
        key = (entry.url, entry.version, model.id)
        if key not in self._checks:
            try:
                info = inspect_adapter(entry.url, self._config_of(model))
            except AdapterError as error:  # named as clients know it, not by the server's path
                self._checks[key] = str(error).replace(entry.url, repr(entry.name))
            else:
                self._checks[key] = self._swappable(info) or AdapterCard(
                    id=entry.name, models=[model.id], rank=info.rank, size_bytes=entry.size_bytes)
        return self._checks[key]

    def _swappable(self, info: AdapterInfo) -> str | None:
        """Why an adapter cannot stay loaded on a gang that swaps between the served models, or None. Its layers
        stay across swaps, and the input projection is the one layer whose shape differs between T2V and I2V."""
        if len(self.served_models) > 1 and any(target.startswith(INPUT_PROJECTION) for target in info.targets):
            return (f"it changes the input projection ({INPUT_PROJECTION}), whose shape differs between the served "
                    "models, which share each gang")
        return None

    def _config_of(self, model: ServedModel) -> dict:
        if model.id not in self._configs:
            self._configs[model.id] = self._transformer_config(model)
        return self._configs[model.id]

    def _scan(self, force: bool) -> dict[str, _Entry]:
        with self._lock:
            if self.url is None:
                return {}
            if force or time.monotonic() - self._scanned_at > RESCAN_S:
                self._entries = _list_adapters(self.url)
                self._scanned_at = time.monotonic()
            return self._entries


def _list_adapters(url: str) -> dict[str, _Entry]:
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        logger.warning("the LoRA registry %s does not exist: no adapters", url)
        return {}
    entries = {}
    for path, info in fs.find(root, detail=True).items():
        if not path.endswith(SUFFIX):
            continue
        relative = path[len(root.rstrip("/")) + 1:]
        name = relative.rsplit("/", 1)[0] if relative.endswith("/" + DIFFUSERS_FILE) else relative[:-len(SUFFIX)]
        version = (info.get("size"), info.get("mtime") or info.get("ETag") or info.get("LastModified"))
        source = path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)
        entries[name] = _Entry(name, source, version, int(info.get("size") or 0))
    return entries
