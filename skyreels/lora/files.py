"""Where a LoRA adapter's file is: a local file or directory, an fsspec URL (downloaded once into the cache), or
a Hugging Face Hub repository; and its tensors, read the way diffusers' HunyuanVideo loader reads them."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from skyreels.lora.spec import DIFFUSERS_WEIGHT_NAME, AdapterError
from skyreels.models import ModelNotAvailableError, ModelSettings, hub_snapshot

logger = logging.getLogger(__name__)

SUFFIX = ".safetensors"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
ACCEPTED = ("a local .safetensors file, a directory holding one, an fsspec URL (s3://, gs://, https://, ...) "
            "or a Hugging Face Hub id (owner/name)")


def resolve_adapter(source: str, settings: ModelSettings | None = None) -> Path:
    """The local .safetensors file of `source`; a URL is downloaded into the cache on first use."""
    settings = settings or ModelSettings()
    if "://" in source:
        return _downloaded(source, settings.cache_dir / "loras")
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != SUFFIX:
            raise AdapterError(f"LoRA {source!r} is not a {SUFFIX} file (only safetensors are loaded: "
                               "pickled checkpoints can run code)")
        return path
    if path.is_dir():
        return _weights_in(path, source)
    if HUB_ID.fullmatch(source) and not source.endswith(SUFFIX):
        try:
            return _weights_in(hub_snapshot(source, [f"*{SUFFIX}"], instead="pass the local file instead"), source)
        except ModelNotAvailableError as error:
            raise AdapterError(f"LoRA {error}") from error
    raise AdapterError(f"LoRA {source!r} not found: use {ACCEPTED}")


def read_adapter(path: Path) -> tuple[dict[str, Any], dict | None]:
    """The file's tensors with the original HunyuanVideo (and ComfyUI) key names converted to diffusers', and
    diffusers' LoRA metadata (rank, alpha, targets) when the file has it."""
    from diffusers.loaders.lora_pipeline import HunyuanVideoLoraLoaderMixin
    from safetensors import SafetensorError

    try:
        return HunyuanVideoLoraLoaderMixin.lora_state_dict(str(path), use_safetensors=True,
                                                           return_lora_metadata=True)
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterError(f"LoRA {path} is not a readable safetensors file ({error})") from error


def _weights_in(directory: Path, source: str) -> Path:
    files = sorted(directory.glob(f"*{SUFFIX}"))
    if len(files) == 1:
        return files[0]
    if (directory / DIFFUSERS_WEIGHT_NAME).is_file():
        return directory / DIFFUSERS_WEIGHT_NAME
    found = f"{len(files)} ({', '.join(f.name for f in files)})" if files else "none"
    raise AdapterError(f"LoRA {source!r}: a directory must hold one {SUFFIX} file or {DIFFUSERS_WEIGHT_NAME}, "
                       f"found {found}")


def _downloaded(url: str, cache_dir: Path) -> Path:
    """The file at `url`, downloaded once: the cache is keyed by the URL (a changed file needs a new URL)."""
    import fsspec

    name = Path(url.split("?")[0]).name
    if not name.endswith(SUFFIX):
        raise AdapterError(f"LoRA {url!r} is not a {SUFFIX} file")
    target = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkstemp(dir=target.parent, suffix=".part")[1])
    logger.info("downloading LoRA %s", url)
    try:
        with fsspec.open(url, "rb") as remote, partial.open("wb") as local:
            shutil.copyfileobj(remote, local)
    except (OSError, ImportError, ValueError) as error:  # ImportError: the URL's filesystem package is missing
        partial.unlink()
        raise AdapterError(f"could not download LoRA {url!r} ({type(error).__name__}: {error})") from error
    partial.rename(target)  # whole or not at all, also when processes race
    return target
