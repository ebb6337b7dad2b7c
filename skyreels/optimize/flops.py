"""FLOPs of one HunyuanVideo DiT forward, counted from the config (for MFU)."""

from __future__ import annotations

from collections.abc import Mapping

# Peak dense bf16 tensor-core throughput (TFLOP/s) of the GPUs this service targets.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "RTX 4090": 165.0}


def video_tokens(config: Mapping, height: int, width: int, num_frames: int) -> int:
    latent_frames = (num_frames - 1) // 4 + 1
    p, p_t = config["patch_size"], config["patch_size_t"]
    return (latent_frames // p_t) * (height // 8 // p) * (width // 8 // p)


def dit_forward_flops(config: Mapping, video: int, text: int, batch: int = 1) -> float:
    """Matmul FLOPs (2 per multiply-add) of one forward: projections, MLPs and joint attention.

    Per token, a dual-stream block has q/k/v/out (4 D^2) and an MLP of ratio r (2 r D^2) per
    stream; a single-stream block has q/k/v (3 D^2), the MLP input (r D^2) and the fused output
    ((1 + r) D^2). Attention is 2 matmuls of N^2 D over the joint sequence N = video + text.
    Embedders, modulations, norms and the text refiner add well under 1% at video sizes.
    """
    width = config["num_attention_heads"] * config["attention_head_dim"]
    ratio = config["mlp_ratio"]
    tokens = video + text
    dual = (4 + 2 * ratio) * width**2 * tokens + 2 * tokens**2 * width
    single = (3 + ratio + 1 + ratio) * width**2 * tokens + 2 * tokens**2 * width
    multiply_adds = config["num_layers"] * dual + config["num_single_layers"] * single
    return 2.0 * multiply_adds * batch


def peak_tflops(device_name: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16_TFLOPS.items() if name in device_name), None)
