"""Importing the library, the stages and the Serve app asks CUDA nothing (skyreels.cuda_free_imports), checked on a
simulated CUDA build (tests/simulated_cuda): on the CPU wheel torchao skips its CUDA checks, which hides the fault."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
SIMULATED_CUDA = ROOT / "tests" / "simulated_cuda"
# the processes that import diffusers: CLI and pipeline, a gang rank, the ingress's app (every stage's deployment)
MODULES = ["skyreels.pipeline", "skyreels.gang.rank", "serve_app.app"]


def cuda_queries(imports: str) -> list[dict]:
    """What a fresh process on the simulated CUDA build asks CUDA while it runs `imports`."""
    program = f"{imports}\nimport cuda_sim, json\nprint(json.dumps(cuda_sim.queries()))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SIMULATED_CUDA), str(ROOT)])}
    run = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["cuda"] == "12.8"
    return report["queries"]


def test_importing_the_stages_and_the_app_asks_cuda_nothing() -> None:
    assert cuda_queries("\n".join(f"import {module}" for module in MODULES)) == []


def test_without_skyreels_first_torchao_asks_cuda_as_it_loads() -> None:
    """Why: torchao's import-time checks, which diffusers' torchao quantizer reaches (on a GPU host
    get_device_capability() initialises CUDA)."""
    calls = {query["call"] for query in cuda_queries("import torchao.prototype.mx_formats")}
    assert {"is_available", "get_device_capability"} <= calls
