"""Layouts the planner weighs, and the two ways they meet the served app: a layout as the model runs it
(`ModelledApp`) and as Serve runs it (a Serve config, from the shipped configs' template); and a Serve config read
back as a modelled app (`skyreels plan --config`).

A layout spends GPUs on Denoiser gangs (gangs of one size, one node each) and on the TextEncoder and Vae, each
either beside gang rank 0 with no GPU reserved (the shipped monolithic configs), as a fraction of a gang GPU
(co-located: the gang's workers reserve the rest), or on GPUs of its own (staged; of another type in a
heterogeneous pool). The decode runs on the gang (the parallel VAE) or on the Vae replicas.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from skyreels.planner.hardware import gpu as gpu_of
from skyreels.planner.memory import MemoryTable, Precision, ProcessKey, fits
from skyreels.planner.model import Autoscaling, ModelledApp, Orchestration, StageSpec
from skyreels.preflight.budget import GpuPlan
from skyreels.sim.profile import SimProfile

GANG_SIZES = (1, 2, 3, 4, 6, 8)  # AppConfig.gpus_per_replica: CFG 2 x Ulysses n/2 when even, Ulysses n (24 heads)
GPUS_PER_NODE = 8
# A co-located TextEncoder and Vae take this share of a gang GPU each; the workers keep WORKER_GPU_FRACTION
# (AppConfig.worker_gpu_fraction: above 0.5, or Ray packs two workers on one GPU), and every share fits on one GPU.
COLOCATED_SHARE = 0.125
WORKER_GPU_FRACTION = 0.75
JOBS_PER_GANG = 2  # max_running_jobs per gang (one denoising, one encoding text), plus one per decoding Vae
TEMPLATE = Path(__file__).resolve().parents[2] / "cluster" / "serve_config.gpu8.yaml"
# accelerator_type names Ray gives these GPUs (ray.util.accelerators)
ACCELERATOR_TYPES = {"H100-80GB": "H100", "H200-141GB": "H200", "A100-80GB": "A100-80G", "A800-80GB": "A800",
                     "A100-40GB": "A100-40G", "L40S-48GB": "L40S", "L4-24GB": "L4", "RTX4090-24GB": "RTX",
                     "A10G-24GB": "A10G"}
# Seconds at real scale: a GPU node from request to Ray joining it (cloud VM boot and image pull), a gang's ranks
# from start to weights on the GPUs (two 25.6 GB transformers from local NVMe), a stage replica's.
NODE_START_S = 300.0
GANG_LOAD_S = 90.0
STAGE_LOAD_S = 45.0
# The step cache's share of skipped steps on the real DiT: ParaAttention's First-Block Cache and TeaCache report
# 1.6-2x on HunyuanVideo at their default thresholds (measure yours: benchmarks/bench_step_cache.py on a GPU).
STEP_CACHE_SKIP = 0.4

Placement = Literal["beside", "colocated", "own"]


@dataclass(frozen=True)
class StagePlan:
    """Where a TextEncoder or Vae's replicas run."""

    replicas: int = 1
    placement: Placement = "beside"
    gpu_type: str | None = None  # own GPUs of another type (a heterogeneous pool); None: the gangs'

    @property
    def gpus(self) -> float:
        return {"beside": 0.0, "colocated": COLOCATED_SHARE, "own": 1.0}[self.placement]


@dataclass(frozen=True)
class Layout:
    name: str
    gpu_type: str
    gang_size: int
    gangs: int
    decode_on: Literal["vae", "gang"]
    text: StagePlan = field(default_factory=StagePlan)
    vae: StagePlan = field(default_factory=StagePlan)
    precision: Precision = "lossless"
    about: str = ""

    def gpus(self) -> dict[str, int]:
        """Whole GPUs by type."""
        counts = {self.gpu_type: self.gang_size * self.gangs}
        for stage in (self.text, self.vae):
            if stage.placement == "own":
                kind = stage.gpu_type or self.gpu_type
                counts[kind] = counts.get(kind, 0) + stage.replicas
        return counts

    def running_jobs(self, gangs: int | None = None) -> int:
        """max_running_jobs: enough for every gang and every decoding Vae to be busy, and a job encoding text."""
        gangs = self.gangs if gangs is None else gangs
        decoders = self.vae.replicas if self.decode_on == "vae" else gangs
        return JOBS_PER_GANG * gangs + decoders

    @property
    def total_gpus(self) -> int:
        return sum(self.gpus().values())

    @property
    def worker_gpu_fraction(self) -> float:
        colocated = any(s.placement == "colocated" for s in (self.text, self.vae))
        return WORKER_GPU_FRACTION if colocated else 1.0

    def shape(self) -> str:
        parts = [f"{self.gangs} x gang of {self.gang_size} {self.gpu_type}"]
        for name, stage in (("text", self.text), ("VAE", self.vae)):
            if stage.placement == "own":
                parts.append(f"{stage.replicas} {name} {stage.gpu_type or self.gpu_type}")
            elif stage.placement == "colocated":
                parts.append(f"{stage.replicas} {name} at {stage.gpus:g} GPU")
        return " + ".join(parts) + f", decode on {self.decode_on}"

    # ------------------------------------------------------------------ memory

    def memory(self, table: MemoryTable, precision: Precision | None = None) -> dict[str, tuple[GpuPlan, ...]]:
        """What one node of each GPU type holds (the fullest GPUs)."""
        precision = precision or self.precision
        stage_precision = "fp8" if precision.startswith("fp8") else "lossless"
        keys = {"text": ProcessKey(role="text_encoder", precision=stage_precision), "vae": ProcessKey(role="vae")}
        # beside rank 0 with no GPU reserved (the shipped configs), or a share of a gang GPU: Ray packs shares
        # onto the fullest GPU with room, GPU 0 at worst (serve_app.preflight.place_stages)
        beside = tuple(keys[name] for name, stage in (("text", self.text), ("vae", self.vae))
                       if stage.placement != "own")
        plans = {self.gpu_type: table.gang_gpus(self.gang_size, self.decode_on == "gang", precision, beside)}
        for name, stage in (("text", self.text), ("vae", self.vae)):
            if stage.placement == "own":
                kind = stage.gpu_type or self.gpu_type
                plans[kind] = (*plans.get(kind, ()), table.stage_gpu(keys[name]))
        return plans

    def fits(self, table: MemoryTable, precision: Precision | None = None) -> bool:
        return all(fits(plans, gpu_of(kind)) for kind, plans in self.memory(table, precision).items())

    def with_precision_that_fits(self, table: MemoryTable) -> Layout | None:
        """The layout at the most precise setting whose every GPU fits; None when none does."""
        for precision in ("lossless", "fp8", "offload", "fp8+offload"):
            if self.fits(table, precision):
                return replace(self, precision=precision)
        return None

    # ------------------------------------------------------------------ the model

    def modelled(self, profiles: dict[str, SimProfile], orchestration: Orchestration | None = None,
                 autoscale: dict[str, Autoscaling] | None = None, max_nodes: dict[str, int] | None = None,
                 sim_stand_ins: bool = False, **options: Any) -> ModelledApp:
        """`sim_stand_ins`: the layout runs on the sim's stand-ins, which sleep instead of taking GPU time (a
        stage beside a gang rank does not slow it)."""
        autoscale = autoscale or {}
        text_type, vae_type = (s.gpu_type or self.gpu_type for s in (self.text, self.vae))
        kinds = {self.gpu_type, text_type, vae_type}
        most_gangs = autoscale["Denoiser"].max_replicas if "Denoiser" in autoscale else self.gangs
        return ModelledApp(
            gang_size=self.gang_size,
            gang=StageSpec(replicas=self.gangs, gpus=self.gang_size, autoscaling=autoscale.get("Denoiser"),
                           load_s=GANG_LOAD_S),
            text=StageSpec(replicas=self.text.replicas, gpus=self.text.gpus, max_ongoing_requests=16,
                           autoscaling=autoscale.get("TextEncoder"), load_s=STAGE_LOAD_S, gpu_type=text_type,
                           shares_gang_gpu=self.text.placement != "own" and not sim_stand_ins),
            vae=StageSpec(replicas=self.vae.replicas, gpus=self.vae.gpus, autoscaling=autoscale.get("Vae"),
                          load_s=STAGE_LOAD_S, gpu_type=vae_type,
                          shares_gang_gpu=self.vae.placement != "own" and not sim_stand_ins),
            decode_on=self.decode_on, profiles={kind: profiles[kind] for kind in kinds},
            gang_gpu_type=self.gpu_type, max_running_jobs=self.running_jobs(most_gangs),
            gpus_per_node=dict.fromkeys(kinds, GPUS_PER_NODE), max_nodes=max_nodes, node_start_s=NODE_START_S,
            orchestration=orchestration or Orchestration(),
            # model-level offload brings the DiT over PCIe for every job (as a weight swap does)
            offload_s=profiles[self.gpu_type].weight_swap_seconds if self.precision.endswith("offload") else 0.0,
            **options)

    # ------------------------------------------------------------------ Serve

    def serve_config(self, template: Path = TEMPLATE) -> dict:
        """The shipped 8-GPU config with this layout's gang, stages and precision (its GPU type in accelerator_type
        where a stage has GPUs of its own)."""
        config = yaml.safe_load(template.read_text())
        (app,) = config["applications"]
        args = app["args"]
        # no gpu_type: the app's startup check sees only these args, not where the deployments put the stages
        # (it plays them beside rank 0); `skyreels preflight --config FILE --gpu_type T` plays the whole layout
        args.update(gpus_per_replica=self.gang_size, decode_on=self.decode_on, max_running_jobs=self.running_jobs())
        args["optimize"] = args.get("optimize", {}) | {
            "quant": "fp8" if self.precision.startswith("fp8") else "none",
            "offload": self.precision.endswith("offload")}
        if self.worker_gpu_fraction < 1:
            args["worker_gpu_fraction"] = self.worker_gpu_fraction
        for deployment in app["deployments"]:
            stage = {"TextEncoder": self.text, "Vae": self.vae}.get(deployment["name"])
            options = deployment.setdefault("ray_actor_options", {})
            if deployment["name"] == "Denoiser":  # the planned gangs, on the planned GPUs
                deployment.pop("autoscaling_config", None)
                deployment["num_replicas"] = self.gangs
            if stage is None:
                continue
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = stage.replicas
            options["num_gpus"] = stage.gpus
            options["accelerator_type"] = ACCELERATOR_TYPES[stage.gpu_type or self.gpu_type]
            if stage.placement != "beside":  # Ray gives it a GPU of its own, or its share of a gang GPU
                options.pop("runtime_env", None)
        return copy.deepcopy(config)


def candidates(gpus: int, gpu_type: str, pool: dict[str, int] | None = None) -> list[Layout]:
    """Every layout of `gpus` GPUs of `gpu_type` (gangs within a node), and with a pool of other types for the
    text and VAE stages."""
    layouts = []
    for size in GANG_SIZES:
        if size > min(gpus, GPUS_PER_NODE):
            continue
        gangs = gpus // size
        layouts.append(Layout(f"mono-{size}x{gangs}", gpu_type, size, gangs, "gang",
                              about="monolithic: every stage on the gangs' GPUs"))
        layouts.append(Layout(f"coloc-{size}x{gangs}", gpu_type, size, gangs, "vae",
                              text=StagePlan(1, "colocated"), vae=StagePlan(1, "colocated"),
                              about="a Vae on a share of a gang GPU decodes while the gang denoises"))
        for vaes in (1, 2, 3):
            rest = gpus - 1 - vaes
            if rest >= size and rest % size == 0:
                layouts.append(Layout(f"staged-{size}x{rest // size}+1+{vaes}", gpu_type, size, rest // size, "vae",
                                      text=StagePlan(1, "own"), vae=StagePlan(vaes, "own"),
                                      about="text and VAE on GPUs of their own"))
    for small, count in (pool or {}).items():
        if small == gpu_type or count < 2:
            continue
        for size in GANG_SIZES:
            if size <= min(gpus, GPUS_PER_NODE):
                layouts.append(Layout(f"hetero-{size}x{gpus // size}+{small}", gpu_type, size, gpus // size, "vae",
                                      text=StagePlan(1, "own", small), vae=StagePlan(count - 1, "own", small),
                                      about=f"text and VAE on {small} GPUs"))
    return layouts
