"""The fake CUDA the preflight runs on: devices propagate and mismatch as on CUDA, memory is counted as the
allocators would hold it, and the bindings it rewrites behave as torch's own."""

from __future__ import annotations

import gc

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError

from skyreels.optimize.quant import quantize_linears
from skyreels.preflight import bindings
from skyreels.preflight.fake_cuda import fake_cuda
from skyreels.preflight.gpus import GPU_TYPES, gpu_type
from skyreels.preflight.memory import PINNED, pinned_block

H100 = gpu_type("H100-80GB")


def test_a_host_tensor_in_a_gpu_op_fails_as_on_cuda() -> None:
    with fake_cuda(H100):
        layer = torch.nn.Linear(8, 8).to("cuda")
        assert layer.weight.device == torch.device("cuda:0")
        layer(torch.ones(2, 8, device="cuda"))
        with pytest.raises(FakeTensorDeviceMismatchError, match="same device"):
            layer(torch.ones(2, 8))


def test_memory_is_counted_with_the_allocators_rounding_and_freed() -> None:
    with fake_cuda(H100) as state:
        tracker = state.tracker
        kept = torch.empty(1000, device="cuda")  # 4000 bytes: a 4096-byte block
        passing = torch.empty(2**20, dtype=torch.uint8, device="cuda")
        pinned = torch.empty(3000, dtype=torch.uint8, pin_memory=True)  # 3000 bytes: a 4096-byte block
        assert tracker.live("cuda:0") == 4096 + 2**20
        del passing
        gc.collect()
        assert tracker.live("cuda:0") == 4096 and tracker.peak("cuda:0") == 4096 + 2**20
        assert tracker.live(PINNED) == 4096 == pinned_block(3000)
        assert torch.cuda.max_memory_allocated() == 4096 + 2**20
        assert kept.device.type == "cuda" and pinned.device.type == "cpu"


def test_a_quantised_weight_counts_its_int8_data_and_scales() -> None:
    with fake_cuda(H100) as state:
        model = torch.nn.Sequential(torch.nn.Linear(1024, 1024, bias=False, dtype=torch.bfloat16))
        quantize_linears(model.requires_grad_(False), "int8")
        gc.collect()
        on_host = state.tracker.live("cpu")
        model.to("cuda")
        gc.collect()
        assert 2**20 <= on_host < 2**20 + 16 * 1024  # int8 data and per-row scales, not the bf16 weight
        assert state.tracker.live("cpu") == 0 and state.tracker.live("cuda:0") == on_host


@pytest.mark.parametrize("key", [
    (slice(2, None),), 0, -1, (slice(None), 1), (Ellipsis, 0), (None, slice(1, 3)), (slice(None), None, -2),
    (Ellipsis, slice(0, 4, 2), None), (torch.tensor([0, 2]),), (slice(None), [1, 0]),
])
def test_indexing_rewritten_to_aten_equals_torchs(key) -> None:
    real = torch.arange(4 * 5 * 6.0).reshape(4, 5, 6)
    assert torch.equal(bindings.index(real, key), real[key])
    with fake_cuda(H100):
        fake = torch.empty(4, 5, 6, device="cuda")
        fake_key = tuple(k.to("cuda") if isinstance(k, torch.Tensor) else k for k in key) if isinstance(
            key, tuple) else key
        assert fake[fake_key].shape == real[key].shape


def test_assignment_and_data_moves_keep_devices_right() -> None:
    with fake_cuda(H100):
        mask = torch.zeros(2, 3, 4, dtype=torch.bool, device="cuda")
        mask[:, :, 0] = True
        parameter = torch.nn.Parameter(torch.empty(3), requires_grad=False)
        parameter.data = parameter.data.to("cuda")
        assert parameter.device == torch.device("cuda:0")
        assert torch.cuda.get_device_properties(0).total_memory == H100.memory_bytes


def test_every_gpu_type_the_issue_names_is_known() -> None:
    for name in ("H100-80GB", "H200-141GB", "A100-80GB", "A100-40GB", "L40S-48GB", "L4-24GB", "RTX4090-24GB",
                 "A10G-24GB"):
        assert name in GPU_TYPES
    assert gpu_type("L4-24GB").has_fp8 and not gpu_type("A100-80GB").has_fp8
    with pytest.raises(ValueError, match="known: H100-80GB"):
        gpu_type("V100")
