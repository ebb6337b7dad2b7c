"""Where the app's preflight puts the TextEncoder and Vae (serve_app.preflight): beside gang rank 0 with a share of
its GPU, or on GPUs of their own; and the refusal of shares that Ray could not fit on one gang GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.app import AppConfig
from serve_app.preflight import app_preflight, place_stages
from skyreels.cli import main
from skyreels.preflight.gpus import gpu_type
from skyreels.request import GenerationRequest

CLUSTER = Path(__file__).parents[2] / "cluster"
SMALL = GenerationRequest(prompt="a preflight", height=128, width=128, num_frames=9, num_inference_steps=2)


def test_fractional_stages_go_beside_rank_0_and_whole_gpus_on_their_own() -> None:
    placement = place_stages(0.75, {"TextEncoder": 0.125, "Vae": 0.125})
    assert placement.beside_rank0 == {"TextEncoder": 1, "Vae": 1} and placement.own_gpu == ()
    assert placement.shares == {"TextEncoder": 0.125, "Vae": 0.125} and placement.gpu0_share == 1.0

    placement = place_stages(1.0, {"TextEncoder": 1, "Vae": 0}, {"Vae": 2})
    assert placement.beside_rank0 == {"Vae": 2} and placement.own_gpu == ("TextEncoder",)
    assert placement.shares == {} and placement.gpu0_share == 1.0


def test_shares_add_up_in_rays_units() -> None:
    # 0.7 + 0.1 + 0.2 is 1.0000000000000002 in floats; Ray counts in units of 1e-4
    assert place_stages(0.7, {"TextEncoder": 0.1, "Vae": 0.2}).beside_rank0 == {"TextEncoder": 1, "Vae": 1}


@pytest.mark.parametrize(("fraction", "stage_gpus", "stage_replicas", "figures"), [
    (0.75, {"TextEncoder": 0.25, "Vae": 0.25}, None, "worker_gpu_fraction 0.75 + TextEncoder 0.25 + Vae 0.25 = 1.25"),
    (0.75, {"Vae": 0.25}, {"Vae": 2}, "worker_gpu_fraction 0.75 + Vae 2 x 0.25 = 1.25"),
    (1.0, {"TextEncoder": 0.5}, None, "worker_gpu_fraction 1 + TextEncoder 0.5 = 1.5"),
])
def test_shares_over_one_gpu_are_refused_with_the_figures(
        fraction: float, stage_gpus: dict[str, float], stage_replicas: dict[str, int] | None, figures: str) -> None:
    with pytest.raises(ValueError, match="the GPU shares on a gang GPU exceed 1: " + figures.replace("+", r"\+")):
        place_stages(fraction, stage_gpus, stage_replicas)


def test_the_report_names_the_shares_on_gpu_0() -> None:
    """A gang of 2 whose workers leave a quarter of their GPUs: both stages are played beside rank 0."""
    config = AppConfig(model="Skywork/SkyReels-V1-Hunyuan-T2V", device="cuda", dtype="bfloat16", gpus_per_replica=2,
                       worker_gpu_fraction=0.75)
    report = app_preflight(config, gpu_type("H100-80GB"), SMALL, {"TextEncoder": 0.125, "Vae": 0.125})
    assert [(plan.name, [tenant.label for tenant in plan.tenants]) for plan in report.gpus] == [
        ("GPU 0", ["rank 0 (0.75 GPU)", "TextEncoder (0.125 GPU)", "Vae (0.125 GPU)"]),
        ("GPU 1", ["rank 1 (0.75 GPU)"])]
    assert report.host_processes == 4
    assert report.lines()[0].startswith("GPU 0: peak allocated rank 0 (0.75 GPU) ")
    assert report.fits, report.lines()


def test_skyreels_preflight_refuses_a_config_whose_shares_do_not_fit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Read from the Serve config as `skyreels preflight --config` reads it: num_gpus and the most replicas."""
    document = yaml.safe_load((CLUSTER / "serve_config.gpu8.yaml").read_text())
    (application,) = document["applications"]
    application["args"]["worker_gpu_fraction"] = 0.75
    for deployment in application["deployments"]:
        if deployment["name"] == "Vae":
            deployment["ray_actor_options"] = {"num_cpus": 4, "num_gpus": 0.125}
            deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 2}
        if deployment["name"] == "TextEncoder":
            deployment["ray_actor_options"] = {"num_cpus": 4, "num_gpus": 0.125}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(document))
    assert main(["preflight", "--config", str(path), "--gpu_type", "H100-80GB"]) == 2
    err = capsys.readouterr().err
    assert "worker_gpu_fraction 0.75 + TextEncoder 0.125 + Vae 2 x 0.125 = 1.125" in err
