"""The files in cluster/: each Serve config passes Serve's own schema, each launcher config passes
Ray's own cluster schema, and the GPU arithmetic of every layout adds up.

Fast: parses YAML and validates with Ray's schemas; starts no Ray and does not import the app
(except the one test that checks `args` against the app's own config model, when it exists).
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import (
    DeploymentSchema,
    HTTPOptionsSchema,
    RayActorOptionsSchema,
    ServeApplicationSchema,
    ServeDeploySchema,
)

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"

IMPORT_PATH = "serve_app.app:build_app"
STAGES = {"TextEncoder", "Denoiser", "Vae", "VideoIngress"}
DIT_HEADS = 24  # HunyuanVideo attention heads: the Ulysses degree must divide this
HEAD_NODE = "node:__internal_head__"

SERVE_FILES = ["serve_config.local.yaml", "serve_config.sim.yaml", "serve_config.gpu1.yaml", "serve_config.gpu8.yaml",
               "serve_config.hetero.yaml", "serve_config.l4x8.yaml"]
LAUNCHER_FILES = ["aws.yaml", "gcp.yaml"]
KUBERAY_FILE = "kuberay-rayservice.yaml"
GPUS_PER_NODE = {"serve_config.local.yaml": 0, "serve_config.sim.yaml": 0, "serve_config.gpu1.yaml": 1,
                 "serve_config.gpu8.yaml": 8, "serve_config.hetero.yaml": 8, "serve_config.l4x8.yaml": 8}
L4 = "accelerator_type:L4"  # the resource Ray gives a node with L4 GPUs, which accelerator_type: L4 asks for


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _rayservice() -> dict:
    docs = [d for d in yaml.safe_load_all((CLUSTER / KUBERAY_FILE).read_text()) if d]
    (service,) = [d for d in docs if d.get("kind") == "RayService"]
    return service


def _kuberay_serve_config() -> dict:
    return yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])


def serve_configs() -> dict[str, dict]:
    configs = {name: _load(name) for name in SERVE_FILES}
    configs[f"{KUBERAY_FILE}:serveConfigV2"] = _kuberay_serve_config()
    return configs


SERVE_CONFIGS = serve_configs()


def _deployments(config: dict) -> dict[str, dict]:
    (app,) = config["applications"]
    return {d["name"]: d for d in app["deployments"]}


def _args(config: dict) -> dict:
    (app,) = config["applications"]
    return app["args"]


def _replicas(deployment: dict, which: str) -> int:
    """min or max replica count of a deployment, fixed or autoscaling."""
    if "autoscaling_config" in deployment:
        return deployment["autoscaling_config"][f"{which}_replicas"]
    return deployment.get("num_replicas", 1)


def _gpus(deployment: dict) -> float:
    return deployment.get("ray_actor_options", {}).get("num_gpus") or 0


def _field_names(model) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        if field.alias:
            names.add(field.alias)
    return names


def _unknown_keys(data: dict, model) -> set[str]:
    return set(data) - _field_names(model)


# --------------------------------------------------------------------------- Serve configs


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_config_passes_serve_schema(name):
    config = SERVE_CONFIGS[name]
    schema = ServeDeploySchema.model_validate(config)
    assert len(schema.applications) == 1
    # Serve's models ignore unknown keys, so a misspelt option would vanish silently: check
    # every level against the schema's own field names.
    assert not _unknown_keys(config, ServeDeploySchema)
    assert not _unknown_keys(config.get("http_options", {}), HTTPOptionsSchema)
    (app,) = config["applications"]
    assert not _unknown_keys(app, ServeApplicationSchema)
    for deployment in app["deployments"]:
        assert not _unknown_keys(deployment, DeploymentSchema), deployment["name"]
        DeploymentSchema.model_validate(deployment)
        options = deployment.get("ray_actor_options", {})
        assert not _unknown_keys(options, RayActorOptionsSchema), deployment["name"]
        if "autoscaling_config" in deployment:
            auto = deployment["autoscaling_config"]
            assert not _unknown_keys(auto, AutoscalingConfig), deployment["name"]
            parsed = AutoscalingConfig.model_validate(auto)
            assert 1 <= parsed.min_replicas <= parsed.max_replicas


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_config_targets_the_app_and_its_four_stages(name):
    config = SERVE_CONFIGS[name]
    (app,) = config["applications"]
    assert app["import_path"] == IMPORT_PATH
    assert app["route_prefix"] == "/"
    names = [d["name"] for d in app["deployments"]]
    assert len(names) == len(set(names)), "a deployment is listed twice"
    assert set(names) == STAGES


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_stage_rules_hold(name):
    deployments = _deployments(SERVE_CONFIGS[name])
    # The app builds the Denoiser's placement group from gpus_per_replica; the replica itself
    # holds no GPU and serves one video at a time.
    denoiser = deployments["Denoiser"]
    assert "placement_group_bundles" not in denoiser
    assert "placement_group_strategy" not in denoiser
    assert _gpus(denoiser) == 0
    assert denoiser["max_ongoing_requests"] == 1
    # Only CPU may be asked of the Denoiser replica: whatever it asks must fit bundle 0 of the
    # group the app builds, and that bundle holds no custom resources.
    assert not denoiser.get("ray_actor_options", {}).get("resources")
    # One ingress, on the head node, because the jobs database is one SQLite file there.
    ingress = deployments["VideoIngress"]
    assert ingress.get("num_replicas") == 1 and "autoscaling_config" not in ingress
    assert HEAD_NODE in ingress["ray_actor_options"]["resources"]
    assert _gpus(ingress) == 0


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_gang_mesh_is_valid(name):
    """gpus_per_replica = cfg_degree x ulysses_degree, and Ulysses must divide the 24 heads."""
    n = _args(SERVE_CONFIGS[name])["gpus_per_replica"]
    assert 1 <= n <= 8
    cfg_degree = 2 if n % 2 == 0 else 1
    ulysses_degree = n // cfg_degree
    assert DIT_HEADS % ulysses_degree == 0, f"ulysses degree {ulysses_degree} does not divide {DIT_HEADS}"


def _node_gpus_at_min(config: dict) -> float:
    deployments = _deployments(config)
    gang = _args(config)["gpus_per_replica"]
    return (
        _gpus(deployments["TextEncoder"]) * _replicas(deployments["TextEncoder"], "min")
        + _gpus(deployments["Vae"]) * _replicas(deployments["Vae"], "min")
        + gang * _replicas(deployments["Denoiser"], "min")
    )


def test_local_config_needs_no_gpu():
    config = SERVE_CONFIGS["serve_config.local.yaml"]
    args = _args(config)
    assert (args["model"], args["device"], args["dtype"], args["gpus_per_replica"]) == ("tiny", "cpu", "float32", 1)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    deployments = _deployments(config)
    assert all(_gpus(d) == 0 for d in deployments.values())
    # Fits a 2-core machine: every replica, plus the gang workers' bundles of the Denoiser's
    # placement group (the replica's own bundle 0 is what its num_cpus asks for).
    cpus = sum(d["ray_actor_options"]["num_cpus"] * _replicas(d, "max") for d in deployments.values())
    cpus += args["worker_cpus"] * args["gpus_per_replica"] * _replicas(deployments["Denoiser"], "max")
    assert cpus <= 2
    assert args["database_path"].startswith("/tmp/skyreels-serve/")
    assert args["artifact_url"].startswith("/tmp/skyreels-serve/")


def test_sim_config_autoscales_every_stage_within_two_cpus():
    config = SERVE_CONFIGS["serve_config.sim.yaml"]
    args = _args(config)
    assert args["model"].startswith("sim") and args["i2v_model"].startswith("sim") and args["device"] == "cpu"
    deployments = _deployments(config)
    assert all("autoscaling_config" in d for name, d in deployments.items() if name != "VideoIngress")
    assert all(_gpus(d) == 0 for d in deployments.values())
    cpus = sum(d["ray_actor_options"]["num_cpus"] * _replicas(d, "max") for d in deployments.values())
    cpus += args["worker_cpus"] * args["gpus_per_replica"] * _replicas(deployments["Denoiser"], "max")
    assert cpus <= 2


def test_gpu1_fits_one_gpu():
    config = SERVE_CONFIGS["serve_config.gpu1.yaml"]
    assert _args(config)["gpus_per_replica"] == 1
    assert _args(config)["device"] == "cuda"
    deployments = _deployments(config)
    # The gang bundle {"GPU": 1} takes the whole GPU resource: nothing else may ask Ray for GPU
    # (it would never be scheduled); text encoder and VAE share the device outside Ray's count.
    assert _node_gpus_at_min(config) == 1
    for name in ("TextEncoder", "Vae"):
        assert _gpus(deployments[name]) == 0
        env = deployments[name]["ray_actor_options"]["runtime_env"]["env_vars"]
        assert env["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] == "1"
    # One GPU holds one copy of each stage: nothing autoscales.
    assert all(_replicas(d, "max") == 1 for d in deployments.values())


@pytest.mark.parametrize("name", ["serve_config.gpu8.yaml", f"{KUBERAY_FILE}:serveConfigV2"])
def test_gpu8_arithmetic(name):
    config = SERVE_CONFIGS[name]
    deployments = _deployments(config)
    gang = _args(config)["gpus_per_replica"]
    # One node at min replicas: text encoder + VAE + gangs within 8 GPUs.
    assert _node_gpus_at_min(config) <= 8
    # The text encoder and the VAE hold a GPU each, or share the gang's: then they ask Ray for none, see the
    # node's GPUs (as on gpu1) and are kept off the CPU-only head by their accelerator type.
    for stage in ("TextEncoder", "Vae"):
        options = deployments[stage]["ray_actor_options"]
        if _gpus(deployments[stage]) == 0:
            assert options["accelerator_type"]
            assert options["runtime_env"]["env_vars"]["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] == "1"
        else:
            assert _gpus(deployments[stage]) == 1
    # At max replicas every extra gang needs a node of its own (more than half of its 8 GPUs):
    # all replicas must fit in max_gangs nodes.
    max_gangs = _replicas(deployments["Denoiser"], "max")
    at_max = (
        _replicas(deployments["TextEncoder"], "max") * _gpus(deployments["TextEncoder"])
        + _replicas(deployments["Vae"], "max") * _gpus(deployments["Vae"])
        + max_gangs * gang
    )
    assert gang > 8 // 2, "this layout assumes one gang per node"
    assert at_max <= 8 * max_gangs
    for stage in ("TextEncoder", "Vae"):
        assert _gpus(deployments[stage]) == 0 or _replicas(deployments[stage], "max") <= max_gangs * (8 - gang)


def test_hetero_puts_the_gangs_on_8_gpu_nodes_and_the_stages_on_l4s():
    config = SERVE_CONFIGS["serve_config.hetero.yaml"]
    args, deployments = _args(config), _deployments(config)
    assert (args["device"], args["gpus_per_replica"], args["decode_on"]) == ("cuda", 8, "vae")
    assert args["artifact_url"].startswith(("s3://", "gs://")), "the Vae (L4 node) writes what the head serves"
    for stage in ("TextEncoder", "Vae"):
        options = deployments[stage]["ray_actor_options"]
        # a whole L4 each, given by Ray (its CUDA_VISIBLE_DEVICES): no NOSET, no share of a gang GPU
        assert _gpus(deployments[stage]) == 1 and options["accelerator_type"] == "L4"
        assert "runtime_env" not in options
    vae = AutoscalingConfig.model_validate(deployments["Vae"]["autoscaling_config"])
    assert vae.min_replicas == 1 < vae.max_replicas and vae.target_ongoing_requests == 1
    assert deployments["Vae"]["max_ongoing_requests"] == 1
    assert deployments["Denoiser"]["autoscaling_config"] == _deployments(
        SERVE_CONFIGS["serve_config.gpu8.yaml"])["Denoiser"]["autoscaling_config"]
    assert args["max_running_jobs"] > 2 * _replicas(deployments["Denoiser"], "max")
    assert "# The planner's table (benchmarks/plan_tables.py" in (CLUSTER / "serve_config.hetero.yaml").read_text()


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_gpu_shares_fit_beside_a_worker(name):
    """The shares of a GPU that the workers and the fractional stage replicas ask of Ray add up, as the app's
    preflight counts them (serve_app.preflight.place_stages, without playing anything)."""
    preflight = pytest.importorskip("serve_app.preflight")
    commands = pytest.importorskip("serve_app.commands")

    config = SERVE_CONFIGS[name]
    stages = [d for d in _deployments(config).values() if d["name"] in preflight.STAGES]
    placement = preflight.place_stages(_args(config).get("worker_gpu_fraction", 1.0),
                                       {d["name"]: _gpus(d) for d in stages},
                                       {d["name"]: commands.most_replicas(d) for d in stages})
    assert placement.gpu0_share <= 1


def test_kuberay_serve_config_is_gpu8_with_cluster_storage():
    gpu8 = SERVE_CONFIGS["serve_config.gpu8.yaml"]
    embedded = _kuberay_serve_config()
    assert _deployments(embedded) == _deployments(gpu8)
    assert embedded["http_options"] == gpu8["http_options"]
    changed = {k for k in _args(gpu8) if _args(gpu8)[k] != _args(embedded).get(k)}
    assert set(_args(embedded)) == set(_args(gpu8))
    assert changed == {"database_path", "artifact_url"}
    assert _args(embedded)["artifact_url"].startswith(("s3://", "gs://"))


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_config_applies_to_the_built_app(name):
    """What Serve does at deploy time, without Ray: build the app from `args`, then apply each
    deployment's options from the config to the deployment the app built. This is where a
    Denoiser replica that no longer fits bundle 0 of the app's placement group is refused."""
    app_module = pytest.importorskip("serve_app.app")
    from ray.serve._private.build_app import build_app as build_serve_app

    config = SERVE_CONFIGS[name]
    (app,) = config["applications"]
    app_module.AppConfig.model_validate(app["args"])
    built = build_serve_app(app_module.build_app(app["args"]), name=app["name"], default_runtime_env={})
    assert built.ingress_deployment_name == "VideoIngress"
    by_name = {d.name: d for d in built.deployments}
    assert set(by_name) == STAGES
    for options in app["deployments"]:
        deployment = by_name[options["name"]].options(**{k: v for k, v in options.items() if k != "name"})
        bundles = deployment._replica_config.placement_group_bundles
        if options["name"] == "Denoiser":
            # 1 bundle for the replica + one bundle per gang worker, holding a GPU on GPU configs.
            assert len(bundles) == 1 + app["args"]["gpus_per_replica"]
            gpus = app["args"]["gpus_per_replica"] if app["args"]["device"] == "cuda" else 0
            assert sum(b.get("GPU", 0) for b in bundles) == gpus
        else:
            assert bundles is None


def test_cpu_config_asks_no_gpu_of_the_built_app():
    """serve_config.local.yaml must run on a machine without a GPU, gang included."""
    app_module = pytest.importorskip("serve_app.app")
    from ray.serve._private.build_app import build_app as build_serve_app

    (app,) = SERVE_CONFIGS["serve_config.local.yaml"]["applications"]
    assert app["args"]["device"] == "cpu"
    built = build_serve_app(app_module.build_app(app["args"]), name=app["name"], default_runtime_env={})
    (denoiser,) = [d for d in built.deployments if d.name == "Denoiser"]
    assert sum(b.get("GPU", 0) for b in denoiser._replica_config.placement_group_bundles) == 0
    for deployment in built.deployments:
        assert not deployment._replica_config.ray_actor_options.get("num_gpus")


# --------------------------------------------------------------------------- KubeRay


def test_kuberay_manifest_shape():
    service = _rayservice()
    assert service["apiVersion"] == "ray.io/v1"
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    import ray

    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    assert set(groups) == {"gpu-8x", "gpu-l4"}
    workers = groups["gpu-8x"]
    container = workers["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 8
    # One Denoiser gang per 8-GPU pod: the group can grow to as many pods as there are gangs.
    denoiser = _deployments(_kuberay_serve_config())["Denoiser"]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    assert workers["maxReplicas"] >= _replicas(denoiser, "max")
    # The jobs database path lives on the head pod's mounted volume.
    db = Path(_args(_kuberay_serve_config())["database_path"])
    mounts = [Path(m["mountPath"]) for m in head.get("volumeMounts", [])]
    assert any(db.is_relative_to(m) for m in mounts)


def test_kuberay_l4_group_serves_the_hetero_stages():
    """The second worker group: one-L4 pods on L4 nodes, which the in-tree autoscaler (reading the group as Ray's
    KubeRay autoscaler does) knows to give accelerator_type L4, from 0 pods up to the hetero stages' replicas."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _get_ray_resources_from_group_spec

    (l4,) = [g for g in _rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu-l4"]
    spec = l4["template"]["spec"]
    assert spec["nodeSelector"], "a one-GPU pod must not land on an 8-GPU node"
    limits = spec["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    resources = _get_ray_resources_from_group_spec(l4, is_head=False)
    assert resources["GPU"] == 1 and resources[L4] == 1
    hetero = _deployments(SERVE_CONFIGS["serve_config.hetero.yaml"])
    assert resources["CPU"] >= max(hetero[s]["ray_actor_options"]["num_cpus"] for s in ("TextEncoder", "Vae"))
    assert l4["minReplicas"] == 0 <= l4["replicas"]
    assert l4["maxReplicas"] >= _replicas(hetero["TextEncoder"], "max") + _replicas(hetero["Vae"], "max")


# --------------------------------------------------------------------------- cluster launcher


def _ray_cluster_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_config_passes_ray_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(name)
    jsonschema.validate(config, _ray_cluster_schema())
    # What `ray up` does before it talks to the cloud: merge the provider defaults, validate.
    validate_config(prepare_config(config))


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_layout(name):
    config = _load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head node is CPU only"
    gpu_types = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) > 0}
    assert all(t.get("min_workers", 0) == 0 for t in gpu_types.values()), "GPU nodes come on demand"
    # The gang nodes (8 GPUs: one gang each), and the L4 nodes of serve_config.hetero.yaml's stages, which
    # declare the accelerator_type resource so that the autoscaler knows which type to start for them.
    gang_types = {k: v for k, v in gpu_types.items() if L4 not in v["resources"]}
    l4_types = {k: v for k, v in gpu_types.items() if L4 in v["resources"]}
    assert gang_types and all(t["resources"]["GPU"] == 8 for t in gang_types.values())
    assert len(l4_types) == 1
    (l4,) = l4_types.values()
    hetero = SERVE_CONFIGS["serve_config.hetero.yaml"]
    stages = _deployments(hetero)
    assert l4["resources"]["GPU"] < _args(hetero)["gpus_per_replica"], "a gang must not fit an L4 node"
    assert l4["resources"]["CPU"] >= max(stages[s]["ray_actor_options"]["num_cpus"] for s in ("TextEncoder", "Vae"))
    l4_stages = _replicas(stages["TextEncoder"], "max") + _replicas(stages["Vae"], "max")
    assert l4["max_workers"] >= l4_stages
    denoiser = _deployments(SERVE_CONFIGS["serve_config.gpu8.yaml"])["Denoiser"]
    assert config["max_workers"] >= _replicas(denoiser, "max") + l4_stages
    assert config["head_start_ray_commands"] and config["worker_start_ray_commands"]
    import ray

    # Same Ray on the cluster as here, and the project installed with CUDA torch on GPU nodes.
    assert any(f"ray[serve,default]=={ray.__version__}" in c for c in config["setup_commands"])
    worker_setup = " ".join(config["worker_setup_commands"])
    assert "download.pytorch.org/whl/cu" in worker_setup and "skyreels-serve[gpu]" in worker_setup


# GPU memory (GB) of the 8-GPU machines the launchers may start for serve_config.gpu8.yaml
GPU_MEMORY_GB = {"p5.48xlarge": 80, "p5e.48xlarge": 141, "p4de.24xlarge": 80, "p4d.24xlarge": 40,
                 "a3-highgpu-8g": 80, "a3-ultragpu-8g": 141, "a2-ultragpu-8g": 80, "a2-highgpu-8g": 40}
# what serve_config.gpu8.yaml puts on a node's first GPU, in bf16 weights alone: gang rank 0's whole DiT (Ulysses
# splits the sequence, not the weights; 12.82e9 parameters), the TextEncoder's LLaMA-3-8B body (7.50e9) + CLIP-L
# (0.12e9) and the Vae's 3D VAE (0.25e9); activations, the VAE decode share and three CUDA contexts come on top
GPU0_WEIGHTS_GB = (12.82 + 7.50 + 0.12 + 0.25) * 2


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_gpus_hold_what_gpu8_puts_on_the_first_one(name):
    types = _load(name)["available_node_types"].values()
    machines = [t["node_config"].get("InstanceType") or t["node_config"].get("machineType")
                for t in types if t["resources"].get("GPU", 0) == 8]
    assert machines and all(GPU_MEMORY_GB[machine] > 1.5 * GPU0_WEIGHTS_GB for machine in machines), machines


def test_serve_stages_refuse_model_level_offload():
    config_module = pytest.importorskip("deployments.config")
    with pytest.raises(ValueError, match="use optimize.block_offload for the DiT"):
        config_module.StageConfig(optimize={"offload": True})
    assert config_module.StageConfig(optimize={"quant": "fp8", "block_offload": True}).optimize.quant == "fp8"
