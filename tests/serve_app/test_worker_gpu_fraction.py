"""AppConfig.worker_gpu_fraction: the DiT workers' share of their GPUs, in the gang's placement group."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.denoiser import gang_bundles
from serve_app.app import AppConfig, build_app


def test_gang_bundles_reserve_the_fraction_of_each_gpu() -> None:
    assert gang_bundles(2, 0.1, 2.0, True, 0.75) == [{"CPU": 0.1}, {"CPU": 2.0, "GPU": 0.75}, {"CPU": 2.0, "GPU": 0.75}]
    assert gang_bundles(1, 0.1, 2.0, True) == [{"CPU": 0.1}, {"CPU": 2.0, "GPU": 1}]
    assert gang_bundles(1, 0.1, 2.0, False, 0.75) == [{"CPU": 0.1}, {"CPU": 2.0}]


@pytest.mark.parametrize("fraction", [0.5, 0.25, 1.5, 0])
def test_gang_bundles_refuse_shares_two_workers_could_share(fraction: float) -> None:
    with pytest.raises(ValueError, match="above 0.5 and at most 1"):
        gang_bundles(2, 0.1, 2.0, True, fraction)


def test_the_fraction_needs_workers_that_reserve_gpus() -> None:
    assert AppConfig(device="cuda", worker_gpu_fraction=0.75).worker_gpu_fraction == 0.75
    assert AppConfig(reserve_gpus=True, worker_gpu_fraction=0.75).reserves_gpus
    for settings in ({}, {"device": "cuda", "reserve_gpus": False}):
        with pytest.raises(ValidationError, match="worker_gpu_fraction=0.75 needs workers that reserve GPUs"):
            AppConfig(worker_gpu_fraction=0.75, **settings)
    for fraction in (0.5, 1.25):
        with pytest.raises(ValidationError, match="worker_gpu_fraction"):
            AppConfig(device="cuda", worker_gpu_fraction=fraction)


def test_the_built_app_reserves_the_fraction_for_each_worker() -> None:
    from ray.serve._private.build_app import build_app as build_serve_app

    app = build_app({"reserve_gpus": True, "gpus_per_replica": 2, "worker_gpu_fraction": 0.75})
    (denoiser,) = [d for d in build_serve_app(app, name="test", default_runtime_env={}).deployments
                   if d.name == "Denoiser"]
    assert [bundle.get("GPU") for bundle in denoiser._replica_config.placement_group_bundles] == [None, 0.75, 0.75]
    # the workers ask for what their bundles hold (they would never be placed asking for more)
    assert denoiser._replica_config.init_args[-1] == 0.75
