"""Text stage: prompt -> LLaMA hidden states through HunyuanVideo's template, plus CLIP pooled."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from transformers import AutoTokenizer, CLIPTextModel, LlamaModel, PreTrainedTokenizerBase

from skyreels.optimize.apply import prepare_text_encoder
from skyreels.optimize.config import OptimizeConfig
from skyreels.stages.conditioning import Conditioning, PromptEmbeds

logger = logging.getLogger(__name__)

PROMPT_TEMPLATE = DEFAULT_PROMPT_TEMPLATE
MAX_PROMPT_TOKENS = 256
CLIP_MAX_TOKENS = 77
# HunyuanVideo reads the LLaMA state two layers below the top (hidden_states[-3]).
LLAMA_HIDDEN_STATE_INDEX = -3


class TextEncoderStage:
    """Encodes prompts; an LRU cache makes a repeated prompt (the default negative) free."""

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
        self._encode_cached = functools.lru_cache(maxsize=cache_size)(self._encode_uncached)

    @classmethod
    def from_pretrained(
        cls,
        base: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        optimize: OptimizeConfig | None = None,
    ) -> TextEncoderStage:
        base = Path(base)
        optimize = optimize or OptimizeConfig()
        llama = LlamaModel.from_pretrained(base / "text_encoder", torch_dtype=dtype)
        prepare_text_encoder(llama, optimize, torch.device(device))
        placement = "cpu" if optimize.offload else device
        return cls(
            llama=llama.to(placement),
            llama_tokenizer=AutoTokenizer.from_pretrained(base / "tokenizer"),
            clip=CLIPTextModel.from_pretrained(base / "text_encoder_2", torch_dtype=dtype).to(placement),
            clip_tokenizer=AutoTokenizer.from_pretrained(base / "tokenizer_2"),
        )

    def models(self) -> tuple[torch.nn.Module, ...]:
        return self.llama, self.clip

    @property
    def device(self) -> torch.device:
        return self.llama.device

    def encode(self, prompt: str, negative_prompt: str | None = None) -> Conditioning:
        """The prompt and (when CFG is on, i.e. a negative prompt is given) the negative one."""
        negative = self.encode_prompt(negative_prompt) if negative_prompt is not None else None
        return Conditioning(positive=self.encode_prompt(prompt), negative=negative)

    def encode_prompt(self, prompt: str) -> PromptEmbeds:
        return self._encode_cached(prompt)

    @torch.inference_mode()
    def _encode_uncached(self, prompt: str) -> PromptEmbeds:
        embeds, mask = self._llama_embeds(prompt)
        return PromptEmbeds(embeds=embeds, mask=mask, pooled=self._clip_pooled(prompt))

    def _llama_embeds(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        crop_start = PROMPT_TEMPLATE["crop_start"]
        tokens = self.llama_tokenizer(
            PROMPT_TEMPLATE["template"].format(prompt),
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

    def _clip_pooled(self, prompt: str) -> torch.Tensor:
        tokens = self.clip_tokenizer(
            prompt, max_length=CLIP_MAX_TOKENS, padding="max_length", truncation=True, return_tensors="pt"
        )
        if len(self.clip_tokenizer(prompt).input_ids) > CLIP_MAX_TOKENS:
            logger.warning("prompt is longer than CLIP's %d tokens; its pooled embedding sees the start only",
                           CLIP_MAX_TOKENS)
        return self.clip(tokens.input_ids.to(self.device), output_hidden_states=False).pooler_output
