"""HunyuanVideo's joint video+text attention, mask-free, on one device or Ulysses-sharded over a mesh.

Installed on diffusers' unmodified HunyuanVideoTransformer3DModel as an attention processor plus a
forward. It differs from diffusers' forward in two ways, neither of which changes the result beyond
floating-point reassociation:

- The prompt's padding tokens are dropped after the token refiner (diffusers masks them as keys in
  every block, and no real token ever reads them), so attention takes no mask: every kernel runs it
  (SDPA's flash and cuDNN paths, FlashAttention 2/3, SageAttention, none of which take diffusers'
  mask) on fewer tokens. Prompts of unequal length in one batch attend one by one, each over its own
  real tokens.
- Over a mesh, each rank of a Ulysses group holds 1/N of the video tokens from the patch embedding to
  the output head; the text tokens (a few dozen) stay whole on every rank. Inside attention an
  all-to-all trades the video sequence shard for a head shard: every rank attends over the full
  sequence for H/N heads (the text tokens contribute their own H/N heads, sliced locally), and a second
  all-to-all trades back. The video sequence is padded to a multiple of N and the pad is left out of
  the keys, so every shape works on every degree.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import HunyuanVideoTransformer3DModel

from skyreels.parallel.collectives import all_gather_cat, heads_to_sequence, sequence_to_heads
from skyreels.parallel.mesh import DeviceMesh
from skyreels.upstream import Transformer2DModelOutput, apply_rotary_emb, dispatch_attention_fn


@dataclass(frozen=True)
class JointTokens:
    """What the blocks get in place of diffusers' attention mask: which joint tokens are real."""

    video: int  # real video tokens; under Ulysses the gathered video sequence is padded past them
    text_mask: torch.Tensor | None  # (B, L) real text tokens, when the batch's prompts differ in length


class JointAttnProcessor:
    """Joint attention of the dual- and single-stream blocks, over a mesh's Ulysses group if any."""

    _attention_backend = None  # set by transformer.set_attention_backend (flash, sage, ...)

    def __init__(self, mesh: DeviceMesh | None = None) -> None:
        self.mesh_given = mesh
        self.mesh = mesh if mesh is not None and mesh.ulysses_degree > 1 else None

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: JointTokens,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = attention_mask
        text_length = encoder_hidden_states.shape[1]
        video, text = _project(attn, hidden_states, encoder_hidden_states, text_length)
        if self.mesh is not None:
            video = [sequence_to_heads(x, self.mesh.ulysses_group) for x in video]
            shard = attn.heads // self.mesh.ulysses_degree
            text = [x[:, :, self.mesh.ulysses_rank * shard:(self.mesh.ulysses_rank + 1) * shard] for x in text]
        if image_rotary_emb is not None:
            video[0], video[1] = (apply_rotary_emb(x, image_rotary_emb, sequence_dim=1) for x in video[:2])
        query = torch.cat([video[0], text[0]], dim=1)
        # the keys and values leave out the Ulysses pad, which follows the real video tokens
        key, value = (torch.cat([v[:, :tokens.video], t], dim=1) for v, t in zip(video[1:], text[1:], strict=True))
        if tokens.text_mask is None:
            out = dispatch_attention_fn(query, key, value, backend=self._attention_backend)
        else:
            out = _attend_each(query, key, value, tokens, self._attention_backend)
        out = out.to(query.dtype)

        video_out, text_out = out[:, :-text_length], out[:, -text_length:]
        if self.mesh is not None:
            video_out = heads_to_sequence(video_out, self.mesh.ulysses_group)
            text_out = all_gather_cat(text_out, dim=2, group=self.mesh.ulysses_group)
        video_out, text_out = video_out.flatten(2, 3), text_out.flatten(2, 3)
        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[1](attn.to_out[0](video_out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return video_out, text_out


@torch.compiler.disable  # the lengths are data: run eagerly (a graph break), not one compiled graph per length pair
def _attend_each(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tokens: JointTokens,
                 backend) -> torch.Tensor:
    """Each batch element over its own real keys: the real video tokens, then its prompt's tokens."""
    lengths = tokens.text_mask.sum(dim=1, dtype=torch.int).tolist()
    return torch.cat([
        dispatch_attention_fn(query[i:i + 1], key[i:i + 1, :tokens.video + n], value[i:i + 1, :tokens.video + n],
                              backend=backend)
        for i, n in enumerate(lengths)
    ])


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


def use_joint_attention(transformer: HunyuanVideoTransformer3DModel, mesh: DeviceMesh | None = None) -> None:
    """Runs `transformer` with the mask-free joint attention, sequence-sharded over `mesh` when given.

    Idempotent; a transformer set up for one device may later be given a mesh, but not a second one.
    """
    installed = joint_attention_processor(transformer)
    if installed is not None:  # over this mesh (or none: one device) already
        if mesh is None or mesh is installed.mesh_given:
            return
        if installed.mesh_given is not None:
            raise RuntimeError("this transformer is already parallelized over another mesh")
    if transformer.config.image_condition_type is not None:
        raise NotImplementedError("only SkyReels' channel-concatenated I2V is supported, not token replacement")
    if mesh is not None and transformer.config.num_attention_heads % mesh.ulysses_degree:
        raise ValueError(f"Ulysses degree {mesh.ulysses_degree} does not divide the "
                         f"{transformer.config.num_attention_heads} heads")
    processor = JointAttnProcessor(mesh)
    # keep the kernel chosen by set_attention_backend, if it was called before
    processor._attention_backend = getattr(transformer.transformer_blocks[0].attn.processor, "_attention_backend", None)
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        block.attn.set_processor(processor)
    if installed is None:
        # Bound once, when the model is prepared and before any hook wraps forward: block offload's top-level hook
        # (which brings the modules outside the blocks to the GPU) wraps this forward, and rebinding it later for a
        # mesh would drop that hook. The mesh is read from the processors at each call instead.
        transformer.forward = functools.partial(_joint_forward, transformer)


def joint_attention_processor(transformer: HunyuanVideoTransformer3DModel) -> JointAttnProcessor | None:
    """The joint processor installed on `transformer`, if any."""
    processor = transformer.transformer_blocks[0].attn.processor
    return processor if isinstance(processor, JointAttnProcessor) else None


def drop_text_padding(text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompt states up to the longest prompt of the batch, and the mask of the real ones (None when every
    prompt is that long). Prompts are padded on the right, as diffusers assumes."""
    longest = int(mask.sum(dim=1, dtype=torch.int).max())  # the mask may come in the model dtype (bf16)
    text_mask = mask[:, :longest].bool()
    return text[:, :longest], None if bool(text_mask.all()) else text_mask


@torch.inference_mode()
def _joint_forward(
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
    """diffusers' forward, with the prompt padding dropped and the video tokens sharded over the mesh."""
    mesh = joint_attention_processor(self).mesh_given
    degree, rank = (mesh.ulysses_degree, mesh.ulysses_rank) if mesh is not None else (1, 0)
    batch, _, frames, height, width = hidden_states.shape
    p, p_t = self.config.patch_size, self.config.patch_size_t
    post_frames, post_height, post_width = frames // p_t, height // p, width // p

    cos, sin = self.rope(hidden_states)
    temb, _ = self.time_text_embed(timestep, pooled_projections, guidance)
    hidden_states = self.x_embedder(hidden_states)
    # the refiner reads the whole padded prompt under its mask; the blocks need only the real tokens
    encoder_hidden_states = self.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)
    encoder_hidden_states, text_mask = drop_text_padding(encoder_hidden_states, encoder_attention_mask)

    length = hidden_states.shape[1]
    pad = -length % degree
    if pad:  # the pad rotates by zero (cos 1, sin 0) and is never a key
        cos, sin = F.pad(cos, (0, 0, 0, pad), value=1.0), F.pad(sin, (0, 0, 0, pad), value=0.0)
        hidden_states = F.pad(hidden_states, (0, 0, 0, pad))
    hidden_states = hidden_states.chunk(degree, dim=1)[rank]
    tokens = JointTokens(video=length, text_mask=text_mask)

    for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
        hidden_states, encoder_hidden_states = block(hidden_states, encoder_hidden_states, temb, tokens, (cos, sin))

    hidden_states = self.proj_out(self.norm_out(hidden_states, temb))
    if degree > 1:
        hidden_states = all_gather_cat(hidden_states, dim=1, group=mesh.ulysses_group)[:, :length]
    hidden_states = hidden_states.reshape(batch, post_frames, post_height, post_width, -1, p_t, p, p)
    hidden_states = hidden_states.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)
    return Transformer2DModelOutput(sample=hidden_states) if return_dict else (hidden_states,)
