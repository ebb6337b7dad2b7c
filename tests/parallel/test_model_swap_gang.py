"""A local gang serving both tasks swaps its ranks' weights between jobs; every job equals one process of its task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skyreels import GenerationRequest, LocalPipeline, Task
from skyreels.gang.local import LocalGang, LocalGangStages
from skyreels.gang.rank import RankSpec
from skyreels.recipe import generate, run_sync

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("world_size", [2, 3], ids=["cfg2", "ulysses3"])
def test_t2v_i2v_t2v_on_one_gang_equal_single_task_runs(
    world_size: int, tiny_t2v_dir: Path, tiny_i2v_dir: Path, t2v_pipeline: LocalPipeline,
    i2v_pipeline: LocalPipeline, t2v_request: GenerationRequest, i2v_request: GenerationRequest,
) -> None:
    spec = RankSpec(transformers={Task.T2V: str(tiny_t2v_dir), Task.I2V: str(tiny_i2v_dir)}, device="cpu",
                    dtype=torch.float32, world_size=world_size, encode_text=True, decode=True)
    jobs = (t2v_request, i2v_request, t2v_request)
    gang = LocalGang(spec)
    try:
        runs = [run_sync(generate(request, LocalGangStages(gang))) for request in jobs]
    finally:
        gang.close()
    single = {Task.T2V: t2v_pipeline.generate(t2v_request), Task.I2V: i2v_pipeline.generate(i2v_request)}
    for request, run in zip(jobs, runs, strict=True):
        assert torch.allclose(run.latents, single[request.task].latents, rtol=0, atol=1e-4)
    assert torch.equal(runs[2].latents, runs[0].latents)  # swapped back exactly
    assert "weights" not in runs[0].timings
    assert runs[1].timings["weights"] > 0 and runs[2].timings["weights"] > 0
