"""A gang rank reports what the service's metrics need (deployments.metrics records them): each step's time, the
time spent on weights and LoRA loads, the adapter cache's hits, and the step cache's skips. One rank, gloo."""

from __future__ import annotations

from pathlib import Path

import torch

from skyreels.gang.commands import Denoise, EncodeText
from skyreels.gang.rank import GangRank, RankSpec
from skyreels.optimize import OptimizeConfig
from skyreels.parallel.group import free_port
from skyreels.progress import StepProgress
from skyreels.recipe import Denoised
from skyreels.request import GenerationRequest, Task
from skyreels.stages.denoise import DenoiseParams
from skyreels.tiny import make_tiny_lora

STEPS = 8


def test_a_rank_reports_step_times_adapter_hits_and_step_cache_skips(tiny_t2v_dir: Path, tmp_path: Path) -> None:
    lora = make_tiny_lora(tmp_path / "ink", seed=5)
    # the threshold at which the tiny model skips some of these 8 steps (tests/parallel/test_step_cache_gang.py)
    spec = RankSpec(transformers={Task.T2V: str(tiny_t2v_dir)}, device="cpu", dtype=torch.float32, world_size=1,
                    optimize=OptimizeConfig(step_cache_threshold=0.44), encode_text=True)
    rank = GangRank(spec, 0)
    rank.join("127.0.0.1", free_port())
    try:
        requests = [GenerationRequest(prompt="a boat on a lake", height=80, width=80, num_frames=9,
                                      num_inference_steps=STEPS, seed=11, loras=loras)
                    for loras in ([], [{"source": str(lora)}], [{"source": str(lora)}])]
        (conditioning,) = rank.run(EncodeText(requests[0].prompt, requests[0].negative_prompt))
        runs = [list(rank.run(Denoise(Task.T2V, conditioning, DenoiseParams.from_request(request), None)))
                for request in requests]
    finally:
        rank.close()

    for events in runs:
        steps, (denoised,) = events[:-1], events[-1:]
        assert [s.step for s in steps if isinstance(s, StepProgress)] == list(range(1, STEPS + 1))
        assert all(s.seconds > 0 for s in steps) and isinstance(denoised, Denoised)
    plain, first_lora, again = (events[-1].figures for events in runs)
    # both CFG branches in one batch: one decision per step; the tiny model skips some at this threshold
    assert plain.forwards == STEPS and 0 < plain.forwards_skipped < STEPS
    assert (plain.adapter_hits, plain.adapter_loads, plain.lora_s) == (0, 0, 0.0)
    assert (first_lora.adapter_hits, first_lora.adapter_loads) == (0, 1) and first_lora.lora_s > 0
    assert (again.adapter_hits, again.adapter_loads, again.lora_s) == (1, 0, 0.0)
    assert plain.swap_s == first_lora.swap_s == again.swap_s == 0.0  # one model: nothing to swap
