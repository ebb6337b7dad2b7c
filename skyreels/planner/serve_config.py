"""A Serve config (a cluster/*.yaml) read as the model's app, for `skyreels plan --config`.

On the `sim` model source the config runs at its time factor on this machine: its delays (wall seconds) become
real-time seconds (divided by the factor), and what Ray and Serve add per job on a 2-core machine
(`SIM_LOCAL_ORCHESTRATION`, wall seconds measured by benchmarks/plan_burst.py) comes in at the same scale; a new
gang's start is this machine's too. Elsewhere the config's GPUs (`gpu_type`) take the scaled profiles of
skyreels.planner.hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from skyreels.planner.hardware import profile_for
from skyreels.planner.layouts import GANG_LOAD_S, STAGE_LOAD_S
from skyreels.planner.model import Autoscaling, ModelledApp, Orchestration, StageSpec
from skyreels.sim.source import SimOptions

DEFAULT_GPU_TYPE = "A800-80GB"  # the sim's published profile; a config without gpu_type
SERVE_LOOK_BACK_S = 30.0  # Serve's default look_back_period_s
APP_MAX_RUNNING_JOBS = 4  # AppConfig.max_running_jobs's default
# Wall seconds on the 2-core development machine, idle (benchmarks/results/plan_burst.md): a lone job of the sim
# config (gang of 2, decode on the Vae) beyond what its stages hold, and a new Denoiser replica's start (its actor,
# two rank actors, the process group and the sim's stages, while the burst runs beside it).
SIM_LOCAL_ORCHESTRATION = Orchestration(text_s=0.052, gang_s=0.314, gang_held_s=0.246, decode_s=0.241,
                                        decode_held_s=0.179, per_job_s=0.003)
SIM_LOCAL_GANG_START_S = 29.0
SIM_LOCAL_STAGE_START_S = 3.0


@dataclass(frozen=True)
class ConfiguredApp:
    app: ModelledApp
    time_factor: float  # the sim's: wall seconds per real-time second (1.0 off the sim)


def read(path: Path, orchestration: Orchestration | None = None, gang_start_s: float | None = None
         ) -> ConfiguredApp:
    """`orchestration` and `gang_start_s` (wall seconds on the sim, real ones elsewhere): measured on the machine
    the config runs on; default: this machine's (sim) or none and a GPU node's model load."""
    config = yaml.safe_load(path.read_text())
    (application,) = config["applications"]
    args: dict[str, Any] = application.get("args", {})
    deployments = {d["name"]: d for d in application.get("deployments", [])}
    sim = SimOptions.parse(str(args.get("model", "")))
    factor = sim.time_factor if sim is not None else 1.0
    gpu_type = args.get("gpu_type") or DEFAULT_GPU_TYPE
    profile = sim.timings if sim is not None else profile_for(gpu_type)
    if sim is not None:
        orchestration = (orchestration or SIM_LOCAL_ORCHESTRATION).scaled(1 / factor)
        gang_load_s = (gang_start_s or SIM_LOCAL_GANG_START_S) / factor
        stage_load_s = SIM_LOCAL_STAGE_START_S / factor
    else:
        gang_load_s, stage_load_s = gang_start_s or GANG_LOAD_S, STAGE_LOAD_S
    gang_size = int(args.get("gpus_per_replica", 1))

    def stage(name: str, gpus: float, load_s: float, default_ongoing: int) -> StageSpec:
        deployment = deployments.get(name, {})
        scaling = deployment.get("autoscaling_config")
        autoscaling = None if not scaling else Autoscaling(
            min_replicas=scaling.get("min_replicas", 1), max_replicas=scaling.get("max_replicas", 1),
            target_ongoing_requests=scaling.get("target_ongoing_requests", 2),
            upscale_delay_s=scaling.get("upscale_delay_s", 30.0) / factor,
            downscale_delay_s=scaling.get("downscale_delay_s", 600.0) / factor,
            look_back_s=scaling.get("look_back_period_s", SERVE_LOOK_BACK_S) / factor)
        replicas = autoscaling.min_replicas if autoscaling else deployment.get("num_replicas", 1)
        return StageSpec(replicas=replicas, gpus=gpus, autoscaling=autoscaling, load_s=load_s,
                         max_ongoing_requests=deployment.get("max_ongoing_requests", default_ongoing),
                         # on a gang GPU's share on GPUs (the sim's stand-ins take no GPU time)
                         shares_gang_gpu=name != "Denoiser" and gpus < 1 and sim is None)

    def stage_gpus(name: str) -> float:
        return float(deployments.get(name, {}).get("ray_actor_options", {}).get("num_gpus", 0) or 0)

    app = ModelledApp(
        gang_size=gang_size,
        gang=stage("Denoiser", gang_size, gang_load_s, 2),
        text=stage("TextEncoder", stage_gpus("TextEncoder"), stage_load_s, int(args.get("text_batch_size", 16))),
        vae=stage("Vae", stage_gpus("Vae"), stage_load_s, 1),
        decode_on=args.get("decode_on", "vae"),
        profiles={gpu_type: profile},
        gang_gpu_type=gpu_type,
        max_running_jobs=int(args.get("max_running_jobs", APP_MAX_RUNNING_JOBS)),
        gpus_per_node={gpu_type: 8},
        max_nodes=None,
        model_group_delay_s=float(args.get("model_group_delay_s", 30.0)) / factor,
        max_attempts=int(args.get("max_attempts", 3)),
        fail_rate=sim.fail_rate if sim is not None else 0.0,
        orchestration=orchestration or Orchestration(),
        control_period_s=0.1 / factor,  # Serve's control loop
    )
    return ConfiguredApp(app, factor)
