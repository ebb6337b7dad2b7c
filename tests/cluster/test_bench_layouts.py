"""benchmarks/bench_cluster.py's layouts and figures, without Ray: every layout spends 8 GPUs in a valid Serve
config, and the summary of a run says what its job records say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bench_cluster import GPU8, LAYOUTS
from cluster_report import StageSeconds, summarize
from ray.serve.schema import ServeDeploySchema

from skyreels.sim.profile import published_a800
from skyreels.sim.source import SimOptions


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
def test_each_layout_is_gpu8s_app_on_eight_gpus(layout, tmp_path: Path) -> None:
    assert layout.gpus == 8
    config = layout.config(yaml.safe_load(GPU8.read_text()), tmp_path, 8123, SimOptions(time_factor=0.03))
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["args"]["model"].startswith("sim?") and app["args"]["reserve_gpus"] is True
    assert (app["args"]["gpus_per_replica"], app["args"]["decode_on"]) == (layout.gang, layout.decode_on)
    deployments = {d["name"]: d for d in app["deployments"]}
    assert all("autoscaling_config" not in d for d in deployments.values())
    gpus = sum(d["num_replicas"] * d["ray_actor_options"].get("num_gpus", 0) for d in deployments.values())
    assert gpus + layout.gang * deployments["Denoiser"]["num_replicas"] == 8


def test_a_summary_reads_the_job_records_at_real_time_scale() -> None:
    (layout,) = [layout for layout in LAYOUTS if layout.name == "staged-6"]
    factor = 0.01
    # two jobs of 100 s each (1 s of sim time), the second queued for 50 s, 10 ms of overhead each
    jobs = [{"status": "completed", "created_at": 0.0, "started_at": 0.0, "completed_at": 1.01,
             "metrics": {"text_encode": 0.1, "denoise": 0.8, "decode": 0.1}},
            {"status": "completed", "created_at": 0.5, "started_at": 1.0, "completed_at": 2.01,
             "metrics": {"text_encode": 0.1, "denoise": 0.8, "decode": 0.1}}]
    summary = summarize(layout, 36.0, jobs, StageSeconds(text=10.0, denoise=80.0, decode=10.0), factor)
    assert summary.throughput_per_hour == pytest.approx(2 / 201 * 3600)
    assert summary.latency_p95_s == pytest.approx(151) and summary.queue_wait_p95_s == pytest.approx(50)
    assert summary.overhead_ms == pytest.approx(10) and summary.orchestration_ms == pytest.approx(10)
    assert summary.busy["Denoiser"] == pytest.approx(160 / 201) and summary.busy["Vae"] == pytest.approx(20 / 201)
    assert summary.capacity_per_hour == pytest.approx(3600 / 80)
    assert layout.stage_seconds(published_a800()).denoise == pytest.approx(130.4, abs=0.1)
