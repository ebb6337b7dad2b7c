"""The small tensor bundles that travel between stages (and between processes in Serve)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class PromptEmbeds:
    """One prompt, encoded: LLaMA hidden states (template cropped), their mask, CLIP pooled."""

    embeds: torch.Tensor  # (1, L, text_embed_dim)
    mask: torch.Tensor  # (1, L), 1 for real tokens
    pooled: torch.Tensor  # (1, pooled_projection_dim)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PromptEmbeds:
        return PromptEmbeds(
            embeds=self.embeds.to(device, dtype), mask=self.mask.to(device, dtype), pooled=self.pooled.to(device, dtype)
        )


@dataclass(frozen=True)
class Conditioning:
    """The positive prompt and, when true CFG is on, the negative one."""

    positive: PromptEmbeds
    negative: PromptEmbeds | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Conditioning:
        negative = self.negative.to(device, dtype) if self.negative is not None else None
        return replace(self, positive=self.positive.to(device, dtype), negative=negative)


@dataclass(frozen=True)
class ImageCondition:
    """I2V: the first frame's latents and the seed generator's state after sampling them.

    diffusers' I2V pipeline samples the image latents from the same generator *before* it draws
    the noise; carrying the state lets the denoiser, in another process, continue the stream.
    """

    latents: torch.Tensor  # (1, C, 1, h, w), scaled by the VAE scaling factor
    generator_state: torch.Tensor

    def to_cpu(self) -> ImageCondition:
        return replace(self, latents=self.latents.cpu())
