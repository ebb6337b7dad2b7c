"""`benchmarks/gpu/run.sh quick`: its dry run on the CPU and the part runner."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
GPU_BENCHMARKS = ROOT / "benchmarks" / "gpu"
# the order of value: a run cut short keeps the first ones
PARTS = ["environment", "dit_diffusers", "dit_lossless", "dit_fp8_dynamic", "memory_offload", "step_cache",
         "end_to_end", "weight_swap"]
NEEDS_CUDA = {"dit_fp8_dynamic"}
SIMULATED_CUDA = ROOT / "tests" / "simulated_cuda"
# quick.py's process (its imports), then a part forked from the part runner's server: what each asked CUDA
FORK_SOURCES = """
import json, sys
from pathlib import Path
import cuda_sim
import quick
from part_runner import PartRunner
parent = list(cuda_sim.QUERIES)
part = PartRunner(quick.PRELOAD, Path(sys.argv[1])).run("queries", "cuda_sim:queries", (), timeout_s=240)
print(json.dumps({"parent": parent, "preload": quick.PRELOAD, "part": part.model_dump()}))
"""


@pytest.fixture
def gpu_benchmarks_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/gpu on the path, here and in the processes the part runner starts (as run.sh sets it)."""
    paths = [str(GPU_BENCHMARKS), str(ROOT / "benchmarks")]
    for path in paths:
        monkeypatch.syspath_prepend(path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]))


@pytest.mark.slow
def test_dry_run_measures_every_part_and_writes_the_report(tmp_path: Path, gpu_benchmarks_importable: None) -> None:
    from skyreels.sim.profile import SimProfile, VideoShape

    run = subprocess.run(["bash", str(GPU_BENCHMARKS / "run.sh"), "quick", "--dry-run"], cwd=ROOT,
                         env={**os.environ, "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    report = json.loads((tmp_path / "quick_dry_run.json").read_text())
    assert list(report["parts"]) == PARTS
    for name, part in report["parts"].items():
        if name in NEEDS_CUDA:
            assert part["status"] == "skipped" and "needs CUDA" in part["reason"], part
        else:
            assert part["status"] == "ok", part
    figures = {name: part["figures"] for name, part in report["parts"].items()}
    for name in ("dit_diffusers", "dit_lossless", "memory_offload"):
        row = figures[name]
        assert row["seconds_per_step"] > 0 and row["seconds_per_video"] == pytest.approx(2 * row["seconds_per_step"])
        assert row["flops_per_forward"] > 0 and row["mfu"] is None  # no peak figure for a CPU
    assert figures["step_cache"]["cached"]["forwards"] == 2 and 0 <= figures["step_cache"]["skip_rate"] <= 1
    stages = figures["end_to_end"]["stage_seconds"]
    assert {"text_encode", "image_encode", "denoise", "decode", "mux"} <= set(stages)
    assert all(seconds > 0 for seconds in stages.values())
    assert figures["weight_swap"]["swaps"] == 6 and figures["weight_swap"]["median s"] > 0
    assert [target["met"] for target in report["targets"]] == [None] * 6  # a dry run judges nothing

    markdown = (tmp_path / "quick_dry_run.md").read_text()
    assert "## DESIGN.md targets" in markdown and all(f"| {name} |" in markdown for name in PARTS)
    profile = SimProfile.load(tmp_path / report["sim_profile"]["file"])
    assert profile.dit_step.seconds_per_step == figures["dit_lossless"]["seconds_per_step"]
    job = profile.job_seconds(VideoShape(height=64, width=64, num_frames=9), steps=2, i2v=True)
    assert job["denoise"] == pytest.approx(2 * profile.dit_step.seconds_per_step)
    assert job["decode"] == stages["decode"] and job["image_encode"] == stages["image_encode"]


def test_part_runner_records_how_each_part_ended(tmp_path: Path, gpu_benchmarks_importable: None) -> None:
    from part_runner import PartRunner

    runner = PartRunner(preload=[], scratch=tmp_path)
    ok = runner.run("ok", "json:loads", ('{"seconds": 1.5}',), timeout_s=60)
    assert (ok.status, ok.figures) == ("ok", {"seconds": 1.5})
    failed = runner.run("failed", "math:sqrt", (-1.0,), timeout_s=60)
    assert failed.status == "failed" and "math domain error" in failed.reason
    hung = runner.run("hung", "time:sleep", (600,), timeout_s=1)
    assert hung.status == "timed_out" and hung.wall_seconds < 30


def test_nothing_the_parts_fork_from_queries_cuda(tmp_path: Path) -> None:
    """On a CUDA build, a process that asked CUDA anything (torch.cuda.is_available() included) before it forks leaves
    its children unable to use CUDA: "Cannot re-initialize CUDA in forked subprocess". The parts fork from the part
    runner's server, which imports quick.PRELOAD; here every process simulates a CUDA build (tests/simulated_cuda),
    and the part reports what its server and quick.py asked CUDA before the fork: nothing."""
    paths = [SIMULATED_CUDA, GPU_BENCHMARKS, ROOT / "benchmarks", ROOT]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
    run = subprocess.run([sys.executable, "-c", FORK_SOURCES, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["parent"] == []
    part = report["part"]
    assert part["status"] == "ok", part
    assert part["figures"]["cuda"] == "12.8"  # the server and the part ran on the simulated CUDA build
    assert part["figures"]["queries"] == [], f"the server that {report['preload']} preloads into asked CUDA"


def test_the_gpu_plan_fits_its_budget(gpu_benchmarks_importable: None) -> None:
    """What the parts are expected to take on one H100 stays under 85 % of what run.sh gives them, so that its
    installs and a part running long leave every part its turn."""
    from quick import PLAN_SHARE, plan
    from quick_settings import GPU

    budget_s = int(re.search(r"QUICK_BUDGET_S:-(\d+)", (GPU_BENCHMARKS / "run.sh").read_text()).group(1))
    parts = plan(GPU)
    assert PLAN_SHARE <= 0.85 and sum(part.expected_s for part in parts) <= PLAN_SHARE * budget_s
    assert all(part.expected_s < part.timeout_s for part in parts)


# what the GPU image brings (fetch_wheels.sh's header) and what comes with its transformers
GPU_IMAGE = {"torch", "transformers", "accelerate", "safetensors", "numpy", "pillow", "imageio", "tqdm", "tokenizers",
             "huggingface-hub", "fsspec"}
# the Serve app's (deployments, serve_app), LoRAs' and `skyreels plan`'s, which quick does not run
SERVING_ONLY = {"ray", "fastapi", "python-multipart", "prometheus-client", "opentelemetry-sdk",
                "opentelemetry-exporter-otlp-proto-http", "peft", "simpy", "pyyaml"}


def test_the_gpu_host_gets_the_library_and_its_dependencies() -> None:
    """run.sh installs the project (its metadata: the `skyreels` script and its entry points) and the wheels of
    fetch_wheels.sh bring every dependency of the library that the GPU image lacks (imageio-ffmpeg writes the mp4)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.-]+", dependency).group(0).lower() for dependency in dependencies}
    fetched = {name.lower() for name in re.findall(r"([A-Za-z0-9_.-]+)==", (GPU_BENCHMARKS / "fetch_wheels.sh").read_text())}
    assert names - GPU_IMAGE - SERVING_ONLY <= fetched and "setuptools" in fetched
    assert re.search(r"pip install [^\n]*-e \.$", (GPU_BENCHMARKS / "run.sh").read_text(), re.MULTILINE)
