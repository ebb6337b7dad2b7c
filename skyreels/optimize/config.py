"""Which optimisations a pipeline applies (CLI flags and the Serve config fill this)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

QuantMode = Literal["none", "auto", "fp8", "int8", "fp8-dynamic"]
AttentionBackend = Literal["native", "_native_cudnn", "flash", "_flash_3", "sage"]


class OptimizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    quant: QuantMode = Field(
        "none", description="Quantisation of the DiT and LLaMA linears. Weight-only: fp8 (Ada/Hopper), int8, or "
        "auto (fp8 where the GPU has it, else int8); these save memory and bandwidth. fp8-dynamic also quantises "
        "the activations (per-row scales) so the matmuls run on fp8 tensor cores: faster on Ada/Hopper only.")
    offload: bool = Field(False, description="Model-level offload: each stage's model on the GPU only while it runs.")
    block_offload: bool = Field(
        False, description="Stream DiT blocks from host memory, one group ahead on a side stream.")
    high_cpu_memory: bool = Field(False, description="Keep pinned host copies of offloaded weights resident.")
    compile: bool = Field(False, description="torch.compile of the repeated transformer blocks (regional).")
    compile_cache_dir: Path | None = Field(None, description="Inductor cache, reused across processes and restarts.")
    attention_backend: AttentionBackend = Field(
        "native", description="Attention kernel: native (PyTorch SDPA, which picks its own), _native_cudnn (SDPA's "
        "cuDNN kernel, CUDA only), flash / _flash_3 (FlashAttention 2 / 3), sage (SageAttention, 8-bit, not "
        "lossless); falls back to native, with the reason logged, where it cannot run.")
    step_cache_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="First-Block cache: skip a step's remaining blocks when the first "
        "block's output changed by less than this (relative L1); None turns it off. 0.05-0.1 is typical.")
