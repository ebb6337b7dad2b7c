"""`skyreels plan` end to end: the layout tables for 8 H100s and 8 L4s, the best one written as a Serve config
that Serve's schema and the app accept and that passes the preflight for its GPU type; a Serve config predicted
under a burst."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from skyreels.cli import main
from skyreels.planner.layouts import Layout, StagePlan
from skyreels.planner.memory import MemoryTable
from skyreels.preflight.gpus import gpu_type
from skyreels.request import GenerationRequest

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = GenerationRequest(prompt="a preflight", height=544, width=960, num_frames=97, num_inference_steps=30)


def table_rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("| ") and not line.startswith(("| layout", "| ---"))]


def planned_config(tmp_path: Path, capsys: pytest.CaptureFixture, *flags: str) -> tuple[list[str], dict]:
    out = tmp_path / "planned.yaml"
    assert main(["plan", *flags, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    return table_rows(printed), yaml.safe_load(out.read_text())


def accepted_by_serve_and_the_app(config: dict) -> None:
    from ray.serve.schema import ServeDeploySchema

    from serve_app.app import AppConfig

    ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    AppConfig.model_validate(application["args"])


@pytest.mark.parametrize(("gpu", "rate"), [("H100-80GB", "30"), ("L4-24GB", "6")])
def test_plan_prints_the_layouts_and_writes_the_best_as_a_serve_config(
        gpu: str, rate: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows, config = planned_config(tmp_path, capsys, "--gpus", "8", "--gpu_type", gpu, "--rate", rate, "--p95", "3600")
    assert len(rows) >= 3
    assert all(re.search(rf"\| \d+ {gpu}", row) for row in rows)
    accepted_by_serve_and_the_app(config)


def test_on_l4s_only_staged_layouts_fit_and_they_need_no_offload(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    rows, _ = planned_config(tmp_path, capsys, "--gpus", "8", "--gpu_type", "L4-24GB", "--rate", "6")
    assert rows and all("staged-" in row and "offload" not in row for row in rows)
    table = MemoryTable.load()
    # monolithic: rank 0's GPU would hold the DiT, the text encoders and the VAE
    assert not Layout("mono", "L4-24GB", 8, 1, "gang").fits(table, "fp8+offload")


def test_a_mixed_pool_puts_text_and_vae_on_the_small_gpus(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows, _ = planned_config(tmp_path, capsys, "--gpus", "8", "--gpu_type", "H100-80GB", "--rate", "30",
                             "--pool", "L4-24GB:2")
    hetero = [row for row in rows if row.startswith("| hetero-")]
    assert hetero and all("L4-24GB" in row for row in hetero)


@pytest.mark.slow
@pytest.mark.parametrize(("gpu", "rate"), [("H100-80GB", "30"), ("L4-24GB", "6")])
def test_the_written_config_passes_the_preflight_for_its_gpu_type(gpu: str, rate: str, tmp_path: Path) -> None:
    from serve_app.commands import preflight_config

    out = tmp_path / "planned.yaml"
    assert main(["plan", "--gpus", "8", "--gpu_type", gpu, "--rate", rate, "--out", str(out)]) == 0
    report = preflight_config(out, gpu_type(gpu), WORKLOAD)
    assert report.fits, report.lines()


def test_staged_layouts_write_stages_with_gpus_of_their_own() -> None:
    layout = Layout("hetero", "H100-80GB", 8, 1, "vae", text=StagePlan(1, "own", "L4-24GB"),
                    vae=StagePlan(2, "own", "L4-24GB"))
    config = layout.serve_config()
    accepted_by_serve_and_the_app(config)
    stages = {d["name"]: d for d in config["applications"][0]["deployments"]}
    assert stages["Vae"]["num_replicas"] == 2
    assert stages["Vae"]["ray_actor_options"]["num_gpus"] == 1
    assert stages["Vae"]["ray_actor_options"]["accelerator_type"] == "L4"
    assert "runtime_env" not in stages["TextEncoder"]["ray_actor_options"]  # Ray picks its GPU
    assert layout.gpus() == {"H100-80GB": 8, "L4-24GB": 3}


def test_a_serve_config_is_predicted_under_a_burst(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "--config", str(ROOT / "cluster" / "serve_config.sim.yaml"), "--burst", "6"]) == 0
    printed = capsys.readouterr().out
    makespan = float(re.search(r"predicted makespan: ([\d.]+) s", printed).group(1))
    assert "6 of 6 videos" in printed and 5 < makespan < 60  # wall seconds at the sim's time factor 0.01


def test_plan_refuses_unclear_flags(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "--gpus", "8"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["plan", "--gpus", "8", "--rate", "3", "--mix", "t2v=0.5,x=0.5"]) == 2
    assert "--mix" in capsys.readouterr().err
    assert main(["plan", "--config", str(ROOT / "cluster" / "serve_config.sim.yaml")]) == 2
    assert "--burst" in capsys.readouterr().err


def test_a_colocated_layout_writes_shares_the_app_can_place() -> None:
    from serve_app.commands import most_replicas
    from serve_app.preflight import place_stages

    layout = Layout("coloc", "H100-80GB", 8, 1, "vae", text=StagePlan(1, "colocated"), vae=StagePlan(1, "colocated"))
    config = layout.serve_config()
    accepted_by_serve_and_the_app(config)
    (application,) = config["applications"]
    stages = {d["name"]: d for d in application["deployments"] if d["name"] in ("TextEncoder", "Vae")}
    placement = place_stages(application["args"]["worker_gpu_fraction"],
                             {name: d["ray_actor_options"]["num_gpus"] for name, d in stages.items()},
                             {name: most_replicas(d) for name, d in stages.items()})
    assert placement.gpu0_share == pytest.approx(1.0)
