"""The mask-free joint attention equals diffusers' masked forward, and no mask ever reaches a kernel."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.attention_dispatch import AttentionBackendName

from gloo_ranks import run_ranks
from skyreels.parallel import joint_attention
from skyreels.parallel.joint_attention import drop_text_padding, use_joint_attention
from skyreels.parallel.mesh import DeviceMesh, MeshShape

TEXT_TOKENS = 12  # the padded prompt length the tiny DiT gets here (the real one gets 256)


@pytest.fixture(scope="module")
def transformers(tiny_t2v_dir: Path) -> tuple[HunyuanVideoTransformer3DModel, HunyuanVideoTransformer3DModel]:
    """diffusers' model as loaded, and the same weights with the joint attention installed."""
    diffusers_model, ours = (HunyuanVideoTransformer3DModel.from_pretrained(tiny_t2v_dir / "transformer").eval()
                             for _ in range(2))
    use_joint_attention(ours)
    return diffusers_model, ours


def inputs(model: HunyuanVideoTransformer3DModel, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    batch = len(lengths)
    mask = torch.zeros(batch, TEXT_TOKENS)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return dict(
        hidden_states=torch.randn(batch, config.in_channels, 3, 8, 10, generator=generator),
        timestep=torch.full((batch,), 700.0),
        encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, config.text_embed_dim, generator=generator),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, config.pooled_projection_dim, generator=generator),
        guidance=torch.full((batch,), 1000.0),
    )


@pytest.fixture
def kernels_refuse_masks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every attention call of the joint attention goes through a kernel that, like FlashAttention and
    SageAttention, refuses a mask; returns the key lengths it saw."""
    original = joint_attention.dispatch_attention_fn
    key_lengths: list[int] = []

    def refusing(query, key, value, attn_mask=None, **kwargs):
        if attn_mask is not None:
            raise ValueError("`attn_mask` is not supported")
        key_lengths.append(key.shape[1])
        return original(query, key, value, **kwargs)

    monkeypatch.setattr(joint_attention, "dispatch_attention_fn", refusing)
    return key_lengths


@pytest.mark.parametrize("lengths", [[5], [TEXT_TOKENS], [7, 7], [3, 9]],
                         ids=["padded", "full", "batch-equal", "batch-unequal"])
def test_equals_diffusers_forward(transformers, kernels_refuse_masks, lengths: list[int]) -> None:
    diffusers_model, ours = transformers
    arguments = inputs(ours, lengths)
    with torch.inference_mode():
        expected = diffusers_model(**arguments, return_dict=False)[0]
        actual = ours(**arguments, return_dict=False)[0]
    assert torch.allclose(actual, expected, rtol=0, atol=1e-5), (actual - expected).abs().max()
    video_tokens = 3 * 4 * 5
    blocks = len(ours.transformer_blocks) + len(ours.single_transformer_blocks)
    # each element attends over the real video tokens and its own real prompt tokens, never the padding
    per_call = [video_tokens + max(lengths)] if len(set(lengths)) == 1 else [video_tokens + n for n in lengths]
    assert kernels_refuse_masks == per_call * blocks


def test_drop_text_padding_keeps_the_longest_prompt() -> None:
    text = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 6, 1)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    trimmed, text_mask = drop_text_padding(text, mask)
    assert torch.equal(trimmed, text[:, :4])
    assert text_mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    trimmed, text_mask = drop_text_padding(text[:1], mask[:1])
    assert trimmed.shape == (1, 2, 1) and text_mask is None


def test_installing_twice_is_harmless_and_a_second_mesh_is_refused(transformers) -> None:
    _, ours = transformers
    forward = ours.forward
    use_joint_attention(ours)
    assert ours.forward == forward
    processor = joint_attention.joint_attention_processor(ours)
    processor.mesh_given = object()  # as if parallelized over a mesh
    try:
        with pytest.raises(RuntimeError, match="already parallelized over another mesh"):
            use_joint_attention(ours, mesh=object())
    finally:
        processor.mesh_given = None


def _sharded_forward(rank: int, transformer_dir: str, arguments: dict, degree: int) -> tuple[torch.Tensor, list]:
    """On every rank: the transformer Ulysses-sharded over the whole group, through a mask-refusing kernel."""
    key_lengths: list[int] = []
    original = joint_attention.dispatch_attention_fn

    def refusing(query, key, value, attn_mask=None, **kwargs):
        assert attn_mask is None, "a mask reached the kernel"
        key_lengths.append(key.shape[1])
        return original(query, key, value, **kwargs)

    joint_attention.dispatch_attention_fn = refusing
    model = HunyuanVideoTransformer3DModel.from_pretrained(transformer_dir).eval()
    use_joint_attention(model, DeviceMesh(MeshShape(degree, cfg_degree=1, ulysses_degree=degree)))
    with torch.inference_mode():
        return model(**arguments, return_dict=False)[0], key_lengths


@pytest.mark.slow
@pytest.mark.parametrize("degree", [2, 3])
def test_ulysses_equals_diffusers_forward(transformers, tiny_t2v_dir: Path, degree: int) -> None:
    """60 video tokens (3 x 4 x 5), padded to 62 on 2 ranks; unequal prompts in one batch; no mask anywhere."""
    diffusers_model, _ = transformers
    lengths = [3, 9]
    arguments = inputs(diffusers_model, lengths, seed=1)
    with torch.inference_mode():
        expected = diffusers_model(**arguments, return_dict=False)[0]
    for output, key_lengths in run_ranks(degree, _sharded_forward, str(tiny_t2v_dir / "transformer"), arguments,
                                         degree):
        assert torch.allclose(output, expected, rtol=0, atol=1e-5), (output - expected).abs().max()
        assert sorted(set(key_lengths)) == [60 + n for n in lengths]  # real video + own prompt: pad never a key


def test_the_chosen_kernel_survives_installing_a_mesh(tiny_t2v_dir: Path, kernels_refuse_masks) -> None:
    """set_attention_backend reaches the joint processor, and giving the model a mesh later keeps the kernel."""
    model = HunyuanVideoTransformer3DModel.from_pretrained(tiny_t2v_dir / "transformer").eval()
    use_joint_attention(model)
    model.set_attention_backend("_native_math")  # PyTorch's reference kernel: runs on the CPU
    use_joint_attention(model, mesh=SimpleNamespace(ulysses_degree=1, ulysses_rank=0))  # a CFG-only mesh
    processors = {block.attn.processor for block in [*model.transformer_blocks, *model.single_transformer_blocks]}
    assert len(processors) == 1
    assert next(iter(processors))._attention_backend == AttentionBackendName._NATIVE_MATH
    arguments = inputs(model, [4, 8])
    with torch.inference_mode():
        assert torch.isfinite(model(**arguments, return_dict=False)[0]).all()
    assert kernels_refuse_masks  # the calls went through the joint processor, unmasked
