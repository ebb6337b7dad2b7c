from __future__ import annotations

import torch

from skyreels import DEFAULT_NEGATIVE_PROMPT, LocalPipeline
from skyreels.stages.text import MAX_PROMPT_TOKENS, TextEncoderStage


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


def test_negative_prompt_encoded_once(t2v_pipeline: LocalPipeline, monkeypatch) -> None:
    text = t2v_pipeline.text
    text.encode("first prompt", DEFAULT_NEGATIVE_PROMPT)
    forwards: list[list[str]] = []
    encode_batch = text._encode_batch
    monkeypatch.setattr(text, "_encode_batch", lambda prompts: forwards.append(prompts) or encode_batch(prompts))
    conditioning = text.encode("second prompt", DEFAULT_NEGATIVE_PROMPT)
    assert forwards == [["second prompt"]]  # the negative prompt comes from the cache
    assert conditioning.negative is not None


def test_prompts_encoded_together_equal_one_by_one(tiny_t2v_dir) -> None:
    prompts = ["a red car", "a blue sea at dawn, waves breaking on black rocks", "a red car", "x"]
    together = TextEncoderStage.from_pretrained(tiny_t2v_dir).encode_prompts(prompts)
    alone = TextEncoderStage.from_pretrained(tiny_t2v_dir)
    assert together[0] is together[2]  # a prompt repeated in a batch is encoded once
    for prompt, batched in zip(prompts, together, strict=True):
        single = alone.encode_prompt(prompt)
        assert torch.equal(batched.mask, single.mask)
        assert torch.allclose(batched.embeds, single.embeds, rtol=0, atol=1e-5)
        assert torch.allclose(batched.pooled, single.pooled, rtol=0, atol=1e-5)


def test_a_batch_larger_than_the_cache(tiny_t2v_dir) -> None:
    loaded = TextEncoderStage.from_pretrained(tiny_t2v_dir)
    small = TextEncoderStage(loaded.llama, loaded.llama_tokenizer, loaded.clip, loaded.clip_tokenizer, cache_size=2)
    prompts = ["a fox", "a hen", "an owl", "a fox", "a cat", "a dog"]
    for prompt, batched in zip(prompts, small.encode_prompts(prompts), strict=True):
        assert torch.allclose(batched.embeds, loaded.encode_prompt(prompt).embeds, rtol=0, atol=1e-5)


def test_no_negative_without_cfg(t2v_pipeline: LocalPipeline) -> None:
    assert t2v_pipeline.text.encode("a prompt").negative is None
