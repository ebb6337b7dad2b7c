"""The `tiny` preset: a deterministic, few-MB SkyReels model in the real on-disk layout.

Every component is the class the real checkpoints use, saved the way the real checkpoints are
(diffusers layout: transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/,
scheduler/), so loading the tiny preset exercises exactly the code that loads the 13B model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

from skyreels.lora.spec import DIFFUSERS_WEIGHT_NAME
from skyreels.request import Task
from skyreels.stages.text import PROMPT_TEMPLATE

logger = logging.getLogger(__name__)

TINY_FORMAT_VERSION = 1
# HunyuanVideo's flow-matching shift; the real scheduler_config.json carries the same value.
FLOW_SHIFT = 7.0

LATENT_CHANNELS = 4
TRANSFORMER_CONFIG = dict(
    num_attention_heads=12,  # divisible by 2, 3, 4 and 6: every Ulysses degree the gang supports
    attention_head_dim=10,
    rope_axes_dim=(2, 4, 4),  # sums to attention_head_dim
    num_layers=1,
    num_single_layers=1,
    num_refiner_layers=1,
    patch_size=2,
    patch_size_t=1,
    mlp_ratio=2.0,
)
# The linears of the DiT's attention and of the single blocks' MLP input: what LoRAs of HunyuanVideo train.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "proj_mlp")
LLAMA_HIDDEN = 16
CLIP_HIDDEN = 8
VOCAB_SIZE = 1024

# The LLaMA special tokens the HunyuanVideo prompt template is written in.
LLAMA_BOS, LLAMA_EOS, LLAMA_PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"
LLAMA_SPECIALS = [LLAMA_BOS, LLAMA_EOS, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", LLAMA_PAD]
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# Llama-3's pre-tokenizer split; with it the template's system part is exactly `crop_start` (95)
# tokens, as with the real tokenizer, so no template token leaks into the embeddings.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TRAINING_TEXT = (
    "A cat walks on the grass, realistic style. A woman smiles at the camera in warm light. "
    "A car drives along a coastal road at sunset, aerial view, overexposed, low quality, deformation, "
    "a poor composition, bad hands, bad teeth, bad eyes, bad limbs, distortion. FPS-24, the quick brown "
    "fox jumps over the lazy dog; waves crash on rocks, a city at night with neon signs, slow motion."
)


def make_tiny_model(path: str | Path, task: Task | str = Task.T2V, seed: int = 0) -> Path:
    """Write the tiny preset for `task` into `path` and return it. Same seed, same bytes."""
    task = Task(task)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _write_components(path, task)
    (path / "model_index.json").write_text(json.dumps(_model_index(task), indent=2))
    logger.info("wrote tiny %s model to %s", task.value, path)
    return path


def _write_components(path: Path, task: Task) -> None:
    llama_tokenizer = _build_llama_tokenizer()
    llama_tokenizer.save_pretrained(path / "tokenizer")
    LlamaModel(
        LlamaConfig(
            vocab_size=len(llama_tokenizer),
            hidden_size=LLAMA_HIDDEN,
            intermediate_size=2 * LLAMA_HIDDEN,
            num_hidden_layers=3,  # the prompt embedding is hidden_states[-3]
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=512,  # 95 template + 256 prompt tokens must fit
            bos_token_id=llama_tokenizer.bos_token_id,
            eos_token_id=llama_tokenizer.eos_token_id,
            pad_token_id=llama_tokenizer.pad_token_id,
        )
    ).save_pretrained(path / "text_encoder")

    clip_tokenizer = _build_clip_tokenizer()
    clip_tokenizer.save_pretrained(path / "tokenizer_2")
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            hidden_size=CLIP_HIDDEN,
            intermediate_size=2 * CLIP_HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=CLIP_HIDDEN,
            # the pooled output is read at the first end token: the ids must agree with the tokenizer
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
        )
    ).save_pretrained(path / "text_encoder_2")

    AutoencoderKLHunyuanVideo(
        latent_channels=LATENT_CHANNELS,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
    ).save_pretrained(path / "vae")

    FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT).save_pretrained(path / "scheduler")

    # Last, so that every other component is the same for both tasks, as in the real model.
    tiny_transformer(task).save_pretrained(path / "transformer")


def tiny_transformer(task: Task, **changes) -> HunyuanVideoTransformer3DModel:
    """The tiny DiT with random weights from torch's generator; `changes` override its config."""
    # SkyReels-V1-I2V concatenates the image latents on channels: twice the input channels.
    in_channels = LATENT_CHANNELS * (2 if task is Task.I2V else 1)
    config = dict(TRANSFORMER_CONFIG, in_channels=in_channels, out_channels=LATENT_CHANNELS,
                  text_embed_dim=LLAMA_HIDDEN, pooled_projection_dim=CLIP_HIDDEN)
    return HunyuanVideoTransformer3DModel(**{**config, **changes})


def make_tiny_lora(path: str | Path, task: Task | str = Task.T2V, rank: int = 4, seed: int = 0,
                   targets: tuple[str, ...] = LORA_TARGETS) -> Path:
    """A LoRA for the tiny preset's DiT, written as diffusers writes one; returns its file. Same seed, same tensors."""
    with torch.random.fork_rng(devices=[]):  # the caller's generator stays as it was
        transformer = tiny_transformer(Task(task))  # only its shapes matter
    return write_lora(transformer, path, rank, seed, targets)


def write_lora(transformer: HunyuanVideoTransformer3DModel, path: str | Path, rank: int, seed: int,
               targets: tuple[str, ...]) -> Path:
    """A random LoRA of `rank` on the `targets` of `transformer`, made with PEFT: both matrices random (PEFT's
    default B is zero, which would change nothing), so it visibly changes the video."""
    from peft import LoraConfig, get_peft_model_state_dict

    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(config)
    HunyuanVideoPipeline.save_lora_weights(path, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                           transformer_lora_adapter_metadata=config.to_dict())
    return Path(path) / DIFFUSERS_WEIGHT_NAME



def _build_llama_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [PROMPT_TEMPLATE["template"].format(TRAINING_TEXT), TRAINING_TEXT]
    _train(tokenizer, corpus, LLAMA_SPECIALS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA_BOS} $A", pair=f"{LLAMA_BOS} $A {LLAMA_BOS} $B", special_tokens=_ids(tokenizer, [LLAMA_BOS])
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=LLAMA_BOS, eos_token=LLAMA_EOS, pad_token=LLAMA_PAD
    )


def _build_clip_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    _train(tokenizer, [TRAINING_TEXT.lower()], [CLIP_BOS, CLIP_EOS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_BOS} $A {CLIP_EOS}",
        pair=f"{CLIP_BOS} $A {CLIP_EOS} $B {CLIP_EOS}",
        special_tokens=_ids(tokenizer, [CLIP_BOS, CLIP_EOS]),
    )
    # like openai/clip-vit-large-patch14: padding with the end token
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=CLIP_BOS, eos_token=CLIP_EOS, pad_token=CLIP_EOS, model_max_length=77
    )


def _train(tokenizer: Tokenizer, corpus: list[str], special_tokens: list[str]) -> None:
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)


def _ids(tokenizer: Tokenizer, tokens: list[str]) -> list[tuple[str, int]]:
    return [(token, tokenizer.token_to_id(token)) for token in tokens]


def _model_index(task: Task) -> dict:
    pipeline = "HunyuanSkyreelsImageToVideoPipeline" if task is Task.I2V else "HunyuanVideoPipeline"
    return {
        "_class_name": pipeline,
        "_diffusers_version": "0.42.1",
        "skyreels_tiny_format": TINY_FORMAT_VERSION,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "LlamaModel"],
        "text_encoder_2": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
    }
