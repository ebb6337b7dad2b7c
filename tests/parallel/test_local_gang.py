"""The local gang as a service would use it: speed options on the ranks, cancel, a rank that dies."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from skyreels import GenerationRequest, LocalPipeline
from skyreels.optimize import OptimizeConfig
from skyreels.progress import GenerationCancelled, StepProgress

pytestmark = pytest.mark.slow

# 80x80x9: 75 video tokens, so Ulysses 2 runs its padded path
REQUEST = GenerationRequest(prompt="a boat on a lake", height=80, width=80, num_frames=9, num_inference_steps=3,
                            seed=11)


@pytest.mark.parametrize("optimize", [OptimizeConfig(compile=True), OptimizeConfig(quant="int8")],
                         ids=["compile", "int8"])
def test_speed_options_run_on_every_rank(optimize: OptimizeConfig, tiny_t2v_dir: Path) -> None:
    """Compiled blocks (with the all-to-alls inside) and quantised linears under Ulysses 2 equal one process
    with the same options."""
    single = LocalPipeline.from_pretrained(tiny_t2v_dir, optimize=optimize).generate(REQUEST)
    gang = LocalPipeline.from_pretrained(tiny_t2v_dir, optimize=optimize, gpu_num=2, sequence_batch=True)
    try:
        parallel = gang.generate(REQUEST)
    finally:
        gang.close()
    assert torch.allclose(parallel.latents, single.latents, rtol=0, atol=1e-4)


def test_cancel_stops_every_rank_and_the_gang_serves_the_next_request(tiny_t2v_dir: Path) -> None:
    gang = LocalPipeline.from_pretrained(tiny_t2v_dir, gpu_num=2)
    try:
        seen: list[int] = []

        def cancel_at_first_step(progress: StepProgress) -> None:
            seen.append(progress.step)
            raise GenerationCancelled

        with pytest.raises(GenerationCancelled):
            gang.generate(REQUEST, on_step=cancel_at_first_step)
        assert seen == [1]
        steps: list[int] = []
        result = gang.generate(REQUEST, on_step=lambda progress: steps.append(progress.step))
        assert steps == [1, 2, 3]
        assert result.frames.shape == (9, 80, 80, 3)
    finally:
        gang.close()


def test_a_rank_that_dies_fails_the_request_promptly(tiny_t2v_dir: Path) -> None:
    gang = LocalPipeline.from_pretrained(tiny_t2v_dir, gpu_num=2)
    rank1 = next(child for child in multiprocessing.active_children() if child.name == "skyreels-rank1")

    def kill_rank1(progress: StepProgress) -> None:
        if progress.step == 1:
            os.kill(rank1.pid, signal.SIGKILL)

    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="skyreels-rank1"):
            gang.generate(REQUEST.model_copy(update={"num_inference_steps": 50}), on_step=kill_rank1)
    finally:
        gang.close()
    assert time.monotonic() - started < 60
    assert not rank1.is_alive()


def test_ranks_exit_when_the_driving_process_is_killed(tiny_t2v_dir: Path) -> None:
    """A CLI killed with SIGKILL leaves no rank behind (daemonic children outlive a parent killed by a signal)."""
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(model=str(tiny_t2v_dir))], stdout=subprocess.PIPE, text=True)
    try:
        ranks = [int(pid) for pid in driver.stdout.readline().split()]
        assert len(ranks) == 2
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in ranks)


DRIVER = """
import multiprocessing, time
from skyreels import LocalPipeline
if __name__ == "__main__":
    gang = LocalPipeline.from_pretrained({model!r}, gpu_num=2)
    print(*(child.pid for child in multiprocessing.active_children() if child.name.startswith("skyreels-rank")),
          flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a reaper."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
