"""Text stage: prompt -> LLaMA hidden states through HunyuanVideo's template, plus CLIP pooled."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from cachetools import LRUCache
from transformers import AutoTokenizer, CLIPTextModel, LlamaModel, PreTrainedTokenizerBase

from skyreels.optimize.apply import prepare_text_encoder
from skyreels.optimize.config import OptimizeConfig
from skyreels.stages.conditioning import Conditioning, PromptEmbeds
from skyreels.upstream import DEFAULT_PROMPT_TEMPLATE

logger = logging.getLogger(__name__)

PROMPT_TEMPLATE = DEFAULT_PROMPT_TEMPLATE
MAX_PROMPT_TOKENS = 256
CLIP_MAX_TOKENS = 77
# HunyuanVideo reads the LLaMA state two layers below the top (hidden_states[-3]).
LLAMA_HIDDEN_STATE_INDEX = -3


class PromptEncoder(ABC):
    """What the pipeline and the TextEncoder deployment ask of a text stage."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> list[PromptEmbeds]:
        """Each prompt's embeddings, in order."""

    @abstractmethod
    def models(self) -> tuple[torch.nn.Module, ...]:
        """The modules that hold weights (for model-level offload)."""

    def encode_prompt(self, prompt: str) -> PromptEmbeds:
        return self.encode_prompts([prompt])[0]

    def encode(self, prompt: str, negative_prompt: str | None = None) -> Conditioning:
        """The prompt and (when CFG is on, i.e. a negative prompt is given) the negative one, in one batch."""
        if negative_prompt is None:
            return Conditioning(positive=self.encode_prompt(prompt))
        positive, negative = self.encode_prompts([prompt, negative_prompt])
        return Conditioning(positive=positive, negative=negative)


class TextEncoderStage(PromptEncoder):
    """Encodes prompts, several in one forward; an LRU cache makes a repeated prompt (the default
    negative) free."""

    def __init__(
        self,
        llama: LlamaModel,
        llama_tokenizer: PreTrainedTokenizerBase,
        clip: CLIPTextModel,
        clip_tokenizer: PreTrainedTokenizerBase,
        cache_size: int = 64,
    ) -> None:
        self.llama = llama.eval().requires_grad_(False)
        self.llama_tokenizer = llama_tokenizer
        self.clip = clip.eval().requires_grad_(False)
        self.clip_tokenizer = clip_tokenizer
        self._cache: LRUCache[str, PromptEmbeds] = LRUCache(maxsize=cache_size)

    @classmethod
    def from_pretrained(
        cls,
        base: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        optimize: OptimizeConfig | None = None,
    ) -> TextEncoderStage:
        base = Path(base)
        return cls.prepared(
            llama=LlamaModel.from_pretrained(base / "text_encoder", torch_dtype=dtype),
            llama_tokenizer=AutoTokenizer.from_pretrained(base / "tokenizer"),
            clip=CLIPTextModel.from_pretrained(base / "text_encoder_2", torch_dtype=dtype),
            clip_tokenizer=AutoTokenizer.from_pretrained(base / "tokenizer_2"),
            device=device,
            optimize=optimize,
        )

    @classmethod
    def prepared(
        cls,
        llama: LlamaModel,
        llama_tokenizer: PreTrainedTokenizerBase,
        clip: CLIPTextModel,
        clip_tokenizer: PreTrainedTokenizerBase,
        device: str | torch.device,
        optimize: OptimizeConfig | None = None,
    ) -> TextEncoderStage:
        """A stage over models already built (in host memory), quantised and placed as `optimize` says."""
        optimize = optimize or OptimizeConfig()
        prepare_text_encoder(llama, optimize, torch.device(device))
        placement = "cpu" if optimize.offload else device
        return cls(llama=llama.to(placement), llama_tokenizer=llama_tokenizer, clip=clip.to(placement),
                   clip_tokenizer=clip_tokenizer)

    def models(self) -> tuple[torch.nn.Module, ...]:
        return self.llama, self.clip

    @property
    def device(self) -> torch.device:
        return self.llama.device

    def encode_prompts(self, prompts: list[str]) -> list[PromptEmbeds]:
        """Each prompt's embeddings; those not cached are encoded together in one batch."""
        unique = dict.fromkeys(prompts)
        found = {p: self._cache[p] for p in unique if p in self._cache}
        missing = [p for p in unique if p not in found]
        if missing:
            encoded = dict(zip(missing, self._encode_batch(missing), strict=True))
            self._cache.update(encoded)
            found |= encoded  # from here, not the cache: a batch larger than the cache evicts its own entries
        return [found[p] for p in prompts]

    @torch.inference_mode()
    def _encode_batch(self, prompts: list[str]) -> list[PromptEmbeds]:
        embeds, mask = self._llama_embeds(prompts)
        pooled = self._clip_pooled(prompts)
        return [PromptEmbeds(embeds=embeds[i:i + 1], mask=mask[i:i + 1], pooled=pooled[i:i + 1])
                for i in range(len(prompts))]

    def _llama_embeds(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        crop_start = PROMPT_TEMPLATE["crop_start"]
        tokens = self.llama_tokenizer(
            [PROMPT_TEMPLATE["template"].format(prompt) for prompt in prompts],
            max_length=MAX_PROMPT_TOKENS + crop_start,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            return_attention_mask=True,
        ).to(self.device)
        hidden_states = self.llama(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        ).hidden_states[LLAMA_HIDDEN_STATE_INDEX]
        return hidden_states[:, crop_start:], tokens.attention_mask[:, crop_start:]

    def _clip_pooled(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.clip_tokenizer(
            prompts, max_length=CLIP_MAX_TOKENS, padding="max_length", truncation=True, return_tensors="pt"
        )
        for prompt in prompts:
            if len(self.clip_tokenizer(prompt).input_ids) > CLIP_MAX_TOKENS:
                logger.warning("prompt is longer than CLIP's %d tokens; its pooled embedding sees the start only",
                               CLIP_MAX_TOKENS)
        return self.clip(tokens.input_ids.to(self.device), output_hidden_states=False).pooler_output
