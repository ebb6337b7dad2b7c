from __future__ import annotations

import torch

from skyreels import DEFAULT_NEGATIVE_PROMPT, LocalPipeline
from skyreels.stages.text import MAX_PROMPT_TOKENS


def test_embeds_shapes_and_mask(t2v_pipeline: LocalPipeline) -> None:
    embeds = t2v_pipeline.text.encode_prompt("FPS-24, a dog runs")
    assert embeds.embeds.shape[:2] == (1, MAX_PROMPT_TOKENS)
    assert embeds.mask.shape == (1, MAX_PROMPT_TOKENS)
    # the prompt's tokens and the template's closing <|eot_id|>, then padding
    valid = int(embeds.mask.sum())
    assert 3 < valid < 20
    assert embeds.mask[0, :valid].all() and not embeds.mask[0, valid:].any()
    assert embeds.pooled.shape == (1, t2v_pipeline.text.clip.config.hidden_size)


def test_different_prompts_differ(t2v_pipeline: LocalPipeline) -> None:
    a = t2v_pipeline.text.encode_prompt("a red car")
    b = t2v_pipeline.text.encode_prompt("a blue sea")
    assert not torch.allclose(a.embeds, b.embeds)
    assert not torch.allclose(a.pooled, b.pooled)


def test_negative_prompt_encoded_once(t2v_pipeline: LocalPipeline) -> None:
    text = t2v_pipeline.text
    text.encode("first prompt", DEFAULT_NEGATIVE_PROMPT)
    misses = text._encode_cached.cache_info().misses
    conditioning = text.encode("second prompt", DEFAULT_NEGATIVE_PROMPT)
    assert text._encode_cached.cache_info().misses == misses + 1  # only the new positive prompt
    assert conditioning.negative is not None


def test_no_negative_without_cfg(t2v_pipeline: LocalPipeline) -> None:
    assert t2v_pipeline.text.encode("a prompt").negative is None
