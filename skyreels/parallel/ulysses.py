"""Ulysses context parallelism for diffusers' unmodified HunyuanVideoTransformer3DModel.

Each rank of a Ulysses group holds 1/N of the video tokens through the whole transformer; the text
tokens (a few hundred) stay whole on every rank. Inside attention an all-to-all trades the video
sequence shard for a head shard: every rank then attends over the full sequence for H/N heads
(the text tokens contribute their own H/N heads, sliced locally), and a second all-to-all trades
back. The video sequence is padded to a multiple of N and the pad is masked as keys, so every shape
works on every degree. Results equal one device up to floating-point reassociation.
"""

from __future__ import annotations

import math
import types

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from skyreels.parallel.mesh import DeviceMesh


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(B, S/N, H, D) sequence shard -> (B, S, H/N, D) head shard, ranks' shards in rank order."""
    world = dist.get_world_size(group)
    batch, shard, heads, dim = x.shape
    chunks = x.reshape(batch, shard, world, heads // world, dim).permute(2, 0, 1, 3, 4).contiguous()
    received = torch.empty_like(chunks)
    dist.all_to_all_single(received, chunks, group=group)
    return received.permute(1, 0, 2, 3, 4).reshape(batch, world * shard, heads // world, dim)


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(B, S, H/N, D) head shard -> (B, S/N, H, D) sequence shard: the inverse of sequence_to_heads."""
    world = dist.get_world_size(group)
    batch, length, heads, dim = x.shape
    chunks = x.reshape(batch, world, length // world, heads, dim).permute(1, 0, 2, 3, 4).contiguous()
    received = torch.empty_like(chunks)
    dist.all_to_all_single(received, chunks, group=group)
    return received.permute(1, 2, 0, 3, 4).reshape(batch, length // world, world * heads, dim)


def all_gather_cat(x: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


class UlyssesAttnProcessor:
    """Joint video+text attention of the dual- and single-stream blocks over a Ulysses group."""

    _attention_backend = None  # set by transformer.set_attention_backend (flash, sage, ...)

    def __init__(self, mesh: DeviceMesh) -> None:
        self.group = mesh.ulysses_group
        self.rank = mesh.ulysses_rank
        self.degree = mesh.ulysses_degree

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_length = encoder_hidden_states.shape[1]
        video, text = self._project(attn, hidden_states, encoder_hidden_states, text_length)
        video = [sequence_to_heads(x, self.group) for x in video]
        if image_rotary_emb is not None:
            video[0], video[1] = (apply_rotary_emb(x, image_rotary_emb, sequence_dim=1) for x in video[:2])
        heads = slice(self.rank * attn.heads // self.degree, (self.rank + 1) * attn.heads // self.degree)
        query, key, value = (torch.cat([v, t[:, :, heads]], dim=1) for v, t in zip(video, text, strict=True))

        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend)
        out = out.to(query.dtype)
        video_out = heads_to_sequence(out[:, :-text_length], self.group).flatten(2, 3)
        text_out = all_gather_cat(out[:, -text_length:], dim=2, group=self.group).flatten(2, 3)
        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[1](attn.to_out[0](video_out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return video_out, text_out

    @staticmethod
    def _project(attn, video: torch.Tensor, text: torch.Tensor, text_length: int):
        """q, k, v of the video tokens and of the text tokens, each (B, S, H, D), normalised."""
        if attn.add_q_proj is None:  # single-stream block: one projection over [video; text]
            joint = torch.cat([video, text], dim=1)
            q, k, v = (proj(joint).unflatten(2, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
            q, k = attn.norm_q(q), attn.norm_k(k)
            return [q[:, :-text_length], k[:, :-text_length], v[:, :-text_length]], [
                q[:, -text_length:], k[:, -text_length:], v[:, -text_length:]]
        vq, vk, vv = (proj(video).unflatten(2, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        tq, tk, tv = (proj(text).unflatten(2, (attn.heads, -1))
                      for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        return [attn.norm_q(vq), attn.norm_k(vk), vv], [attn.norm_added_q(tq), attn.norm_added_k(tk), tv]


def parallelize_transformer(transformer: HunyuanVideoTransformer3DModel, mesh: DeviceMesh) -> None:
    """Makes `transformer` run sequence-sharded over the mesh's Ulysses group (idempotent)."""
    if getattr(transformer, "_skyreels_mesh", None) is not None:
        if transformer._skyreels_mesh is not mesh:
            raise RuntimeError("this transformer is already parallelized over another mesh")
        return
    if transformer.config.image_condition_type is not None:
        raise NotImplementedError("only SkyReels' channel-concatenated I2V is supported, not token replacement")
    if transformer.config.num_attention_heads % mesh.ulysses_degree:
        raise ValueError(f"Ulysses degree {mesh.ulysses_degree} does not divide the "
                         f"{transformer.config.num_attention_heads} heads")
    transformer._skyreels_mesh = mesh
    if mesh.ulysses_degree == 1:
        return
    processor = UlyssesAttnProcessor(mesh)
    processor._attention_backend = getattr(transformer.transformer_blocks[0].attn.processor, "_attention_backend", None)
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        block.attn.set_processor(processor)
    transformer.forward = types.MethodType(_sequence_parallel_forward, transformer)


@torch.inference_mode()
def _sequence_parallel_forward(
    self: HunyuanVideoTransformer3DModel,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_attention_mask: torch.Tensor,
    pooled_projections: torch.Tensor,
    guidance: torch.Tensor | None = None,
    attention_kwargs: dict | None = None,
    return_dict: bool = True,
):
    """diffusers' forward with the video tokens sharded between the embedders and the output head."""
    mesh: DeviceMesh = self._skyreels_mesh
    batch, _, frames, height, width = hidden_states.shape
    p, p_t = self.config.patch_size, self.config.patch_size_t
    post_frames, post_height, post_width = frames // p_t, height // p, width // p

    cos, sin = self.rope(hidden_states)
    temb, _ = self.time_text_embed(timestep, pooled_projections, guidance)
    hidden_states = self.x_embedder(hidden_states)
    encoder_hidden_states = self.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)

    length = hidden_states.shape[1]
    padded = math.ceil(length / mesh.ulysses_degree) * mesh.ulysses_degree
    pad = padded - length
    # the pad rotates by zero (cos 1, sin 0) and is never attended to
    rotary = (F.pad(cos, (0, 0, 0, pad), value=1.0), F.pad(sin, (0, 0, 0, pad), value=0.0))
    video_valid = torch.arange(padded, device=hidden_states.device) < length
    attention_mask = torch.cat(
        [video_valid.expand(batch, padded), encoder_attention_mask.bool()], dim=1
    )[:, None, None, :]
    hidden_states = F.pad(hidden_states, (0, 0, 0, pad)).chunk(mesh.ulysses_degree, dim=1)[mesh.ulysses_rank]

    for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
        hidden_states, encoder_hidden_states = block(
            hidden_states, encoder_hidden_states, temb, attention_mask, rotary
        )

    hidden_states = self.proj_out(self.norm_out(hidden_states, temb))
    hidden_states = all_gather_cat(hidden_states, dim=1, group=mesh.ulysses_group)[:, :length]
    hidden_states = hidden_states.reshape(batch, post_frames, post_height, post_width, -1, p_t, p, p)
    hidden_states = hidden_states.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)
    return Transformer2DModelOutput(sample=hidden_states) if return_dict else (hidden_states,)
