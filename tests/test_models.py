from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from skyreels.models import ModelNotAvailableError, ModelSettings, resolve_model
from skyreels.request import Task


def test_tiny_is_generated_once_into_the_cache(tmp_path: Path) -> None:
    settings = ModelSettings(cache_dir=tmp_path)
    paths = resolve_model("tiny", Task.I2V, settings)
    assert paths.transformer == paths.base / "transformer"
    stamp = (paths.transformer / "config.json").stat().st_mtime_ns
    assert resolve_model("tiny", Task.I2V, settings) == paths
    assert (paths.transformer / "config.json").stat().st_mtime_ns == stamp
    assert resolve_model("tiny", Task.T2V, settings).base != paths.base


def test_local_full_directory(tiny_t2v_dir: Path) -> None:
    paths = resolve_model(str(tiny_t2v_dir), Task.T2V)
    assert paths.base == tiny_t2v_dir and paths.transformer == tiny_t2v_dir / "transformer"


def test_transformer_directory_on_a_base(tmp_path: Path, tiny_t2v_dir: Path) -> None:
    """The SkyReels checkpoints ship the DiT alone; the rest comes from the HunyuanVideo base."""
    transformer = tmp_path / "skyreels-transformer"
    shutil.copytree(tiny_t2v_dir / "transformer", transformer)
    paths = resolve_model(str(transformer), Task.T2V, ModelSettings(base_model=str(tiny_t2v_dir)))
    assert paths.transformer == transformer and paths.base == tiny_t2v_dir


def test_incomplete_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text("{}")
    with pytest.raises(ModelNotAvailableError, match="lacks the component folders"):
        resolve_model(str(tmp_path), Task.T2V)


def test_unknown_source_lists_the_accepted_forms() -> None:
    with pytest.raises(ModelNotAvailableError, match="use 'tiny', a local directory, or a Hub id"):
        resolve_model("no-such-model", Task.T2V)


def test_hub_id_offline_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError, match="could not download 'Skywork/SkyReels-V1-Hunyuan-T2V'"):
        resolve_model("Skywork/SkyReels-V1-Hunyuan-T2V", Task.T2V)
