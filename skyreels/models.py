"""Where a model's weights live: the tiny preset, a local directory, or the Hugging Face Hub.

A SkyReels-V1 model is the SkyReels DiT (transformer) on top of the HunyuanVideo base (text
encoders, tokenizers, VAE, scheduler). `resolve_model` turns any accepted source into the two
directories the stages load from.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from skyreels.request import Task

logger = logging.getLogger(__name__)

TINY = "tiny"
SIM = "sim"  # stage stand-ins with GPU timings (skyreels.sim), options after "?"
HUB_TRANSFORMERS = {Task.T2V: "Skywork/SkyReels-V1-Hunyuan-T2V", Task.I2V: "Skywork/SkyReels-V1-Hunyuan-I2V"}
HUB_BASE = "hunyuanvideo-community/HunyuanVideo"
BASE_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler")


# The names under which the service offers each task (the API's `model` field).
SERVED_MODEL_IDS = {Task.T2V: "skyreels-v1-t2v", Task.I2V: "skyreels-v1-i2v"}


@dataclass(frozen=True)
class ServedModel:
    """One entry of a service's model registry."""

    id: str  # what clients name in `model`
    task: Task
    source: str  # what resolve_model loads: 'tiny', a directory or a Hub id


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKYREELS_")

    cache_dir: Path = Field(Path.home() / ".cache" / "skyreels", description="Where generated presets are kept.")
    base_model: str = Field(HUB_BASE, description="Hub id or directory of the HunyuanVideo base components.")


class ModelNotAvailableError(RuntimeError):
    """The requested weights are neither on disk nor downloadable."""


@dataclass(frozen=True)
class ModelPaths:
    base: Path  # holds text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, vae/, scheduler/
    transformer: Path  # a HunyuanVideoTransformer3DModel directory (config.json + weights)

    def component(self, name: str) -> Path:
        return self.base / name


def resolve_model(source: str, task: Task | str, settings: ModelSettings | None = None) -> ModelPaths:
    """`tiny`, a local directory (full layout, or a transformer alone), or a Hub id."""
    task = Task(task)
    settings = settings or ModelSettings()
    if source == TINY:
        return _full_layout(ensure_tiny_model(task, settings.cache_dir))
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "transformer" / "config.json").is_file():
            return _full_layout(path)
        if _is_transformer_dir(path):
            return ModelPaths(base=_resolve_base(settings.base_model), transformer=path)
        raise ModelNotAvailableError(
            f"{path} is neither a full model directory (transformer/, vae/, text_encoder/, ...) "
            "nor a transformer directory (config.json of a HunyuanVideoTransformer3DModel)"
        )
    if source.count("/") == 1 and not path.exists():
        transformer = hub_snapshot(source, _TRANSFORMER_FILES)
        return ModelPaths(base=_resolve_base(settings.base_model), transformer=transformer)
    raise ModelNotAvailableError(
        f"unknown model source {source!r}: use 'tiny', a local directory, or a Hub id such as "
        f"{HUB_TRANSFORMERS[task]!r}"
    )


def transformer_config_path(source: str, task: Task | str, settings: ModelSettings | None = None) -> Path:
    """The transformer's config.json alone, for checks against the model (a Hub model's weights stay where they
    are)."""
    if source != TINY and source.count("/") == 1 and not Path(source).expanduser().exists():
        return hub_snapshot(source, ["config.json"]) / "config.json"
    return resolve_model(source, task, settings).transformer / "config.json"


def ensure_tiny_model(task: Task, cache_dir: Path) -> Path:
    """The tiny preset for `task`, generated on first use. Safe when several processes race."""
    from skyreels.tiny import TINY_FORMAT_VERSION, make_tiny_model

    target = cache_dir / f"tiny-v{TINY_FORMAT_VERSION}-{task.value}"
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    make_tiny_model(staging, task=task)
    try:
        staging.rename(target)
    except OSError:  # another process finished first: its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target


_TRANSFORMER_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json"]
_BASE_FILES = [f"{name}/*" for name in BASE_COMPONENTS] + ["model_index.json"]


def _full_layout(path: Path) -> ModelPaths:
    missing = [name for name in BASE_COMPONENTS if not (path / name).is_dir()]
    if missing:
        raise ModelNotAvailableError(f"{path} lacks the component folders {missing}")
    return ModelPaths(base=path, transformer=path / "transformer")


def _is_transformer_dir(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("_class_name") == "HunyuanVideoTransformer3DModel"


def _resolve_base(base: str) -> Path:
    path = Path(base).expanduser()
    if path.is_dir():
        return _full_layout(path).base
    return hub_snapshot(base, _BASE_FILES)


def hub_snapshot(repo_id: str, patterns: list[str],
                 instead: str = "pass the local directory instead, or use the 'tiny' preset") -> Path:
    """A Hub snapshot: from the local HF cache when there, else downloaded. `instead` ends the error: what to do
    on an offline machine."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        logger.info("downloading %s from the Hugging Face Hub", repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise ModelNotAvailableError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(error).__name__}: {error}). "
            "If this machine is offline, download it elsewhere with "
            f"`huggingface-cli download {repo_id}` and {instead}."
        ) from error
