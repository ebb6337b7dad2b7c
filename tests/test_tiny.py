"""The tiny preset: real on-disk layout, deterministic, shaped for every parallel degree."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from diffusers import HunyuanVideoTransformer3DModel
from transformers import AutoTokenizer

from skyreels import make_tiny_model
from skyreels.stages.text import PROMPT_TEMPLATE

COMPONENTS = ["transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"]


def digest(path: Path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def test_layout_is_diffusers_layout(tiny_t2v_dir: Path) -> None:
    for name in COMPONENTS:
        assert (tiny_t2v_dir / name).is_dir(), name
    assert list((tiny_t2v_dir / "transformer").glob("*.safetensors"))
    assert json.loads((tiny_t2v_dir / "scheduler" / "scheduler_config.json").read_text())["shift"] == 7.0
    index = json.loads((tiny_t2v_dir / "model_index.json").read_text())
    assert index["_class_name"] == "HunyuanVideoPipeline"


def test_same_seed_same_bytes(tmp_path: Path, tiny_t2v_dir: Path) -> None:
    again = make_tiny_model(tmp_path / "again", task="t2v", seed=0)
    assert digest(again) == digest(tiny_t2v_dir)
    other = make_tiny_model(tmp_path / "other", task="t2v", seed=1)
    assert digest(other) != digest(tiny_t2v_dir)


def test_i2v_transformer_takes_image_latents_on_channels(tiny_i2v_dir: Path) -> None:
    config = HunyuanVideoTransformer3DModel.load_config(tiny_i2v_dir / "transformer")
    assert config["in_channels"] == 2 * config["out_channels"]


def test_heads_split_over_every_ulysses_degree(tiny_t2v_dir: Path) -> None:
    heads = HunyuanVideoTransformer3DModel.load_config(tiny_t2v_dir / "transformer")["num_attention_heads"]
    assert all(heads % degree == 0 for degree in (2, 3, 4, 6))


def test_template_system_part_is_exactly_crop_start_tokens(tiny_t2v_dir: Path) -> None:
    """Otherwise template tokens leak into (or prompt tokens are cut from) the embeddings."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_t2v_dir / "tokenizer")
    template = PROMPT_TEMPLATE["template"]
    ids = tokenizer(template.format("a dog runs")).input_ids
    prompt_ids = tokenizer("a dog runs", add_special_tokens=False).input_ids
    crop = PROMPT_TEMPLATE["crop_start"]
    assert ids[crop : crop + len(prompt_ids)] == prompt_ids
