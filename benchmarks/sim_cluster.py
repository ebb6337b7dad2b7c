"""A multi-node Ray cluster on this machine, scaled by Ray's own autoscaler: fake 8-GPU nodes come and go.

`ray.cluster_utils.AutoscalingCluster` (the harness of Ray's autoscaler tests) does the same but runs
`ray stop --force`, which stops every Ray on the machine, and reads a config file that the wheel does not ship.
Here the head runs under `ray start --head --block` in a process of its own, and stopping the cluster ends
that process and its descendants only: the fake nodes (the autoscaler starts them as its children) and
their workers.

    with FakeGpuCluster(ClusterSpec(max_gpu_nodes=2)) as cluster:
        ray.init(address=cluster.address)
        deploy(sim_config(yaml.safe_load(open("cluster/serve_config.sim.yaml")), ...))
        with Watch(cluster, "skyreels") as watch:
            ...  # load
        watch.samples  # replicas of each deployment and GPU nodes, every half second
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import ray
from ray import serve
from ray.serve.schema import ServeDeploySchema

from skyreels.parallel.group import free_port

logger = logging.getLogger(__name__)

GPU_NODE_TYPE = "gpu8"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
DEPLOY_TIMEOUT_S = 300.0
SAMPLE_PERIOD_S = 0.5


@dataclass(frozen=True)
class ClusterSpec:
    head_cpus: int = 4  # logical: the ingress, the Serve controller and what holds no GPU
    gpu_node_cpus: int = 32  # logical CPUs of a GPU node
    gpus_per_node: int = 8
    min_gpu_nodes: int = 0
    max_gpu_nodes: int = 3
    idle_timeout_s: float = 6.0  # an idle GPU node goes away after this long
    object_store_mib: int = 256  # per node; the sim's payloads are megabytes

    def autoscaling_config(self, gcs_address: str) -> dict:
        store = self.object_store_mib * 2**20
        return {
            "cluster_name": "fake_multinode", "max_workers": self.max_gpu_nodes,
            "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": self.head_cpus, "object_store_memory": store},
                                     "node_config": {}, "max_workers": 0},
                GPU_NODE_TYPE: {"resources": {"CPU": self.gpu_node_cpus, "GPU": self.gpus_per_node,
                                              "object_store_memory": store},
                                "node_config": {}, "min_workers": self.min_gpu_nodes,
                                "max_workers": self.max_gpu_nodes},
            },
            "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
            "idle_timeout_minutes": self.idle_timeout_s / 60, "docker": {}, "initialization_commands": [],
            "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
            "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
            "rsync_filter": [],
        }


class FakeGpuCluster:
    def __init__(self, spec: ClusterSpec | None = None) -> None:
        self.spec = spec or ClusterSpec()
        self.address = ""
        self._dir: Path | None = None
        self._head: subprocess.Popen | None = None

    def __enter__(self) -> FakeGpuCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        # short: Ray's socket paths live under it
        self._dir = Path(tempfile.mkdtemp(prefix="rsim", dir="/tmp"))
        port = free_port()
        self.address = f"{ray.util.get_node_ip_address()}:{port}"
        config = self._dir / "autoscaling.json"
        config.write_text(json.dumps(self.spec.autoscaling_config(self.address)))
        command = [_ray_executable(), "start", "--head", "--block", f"--port={port}",
                   f"--num-cpus={self.spec.head_cpus}", "--num-gpus=0",
                   f"--object-store-memory={self.spec.object_store_mib * 2**20}",
                   f"--autoscaling-config={config}", f"--temp-dir={self._dir}", "--include-dashboard=false",
                   "--disable-usage-stats"]
        # token auth (`ray start`'s default) would need every client to carry the token: a local test cluster
        # goes without
        env = os.environ | {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        log = (self._dir / "head.log").open("w")
        self._head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_for_head()
        logger.info("fake GPU cluster at %s (logs in %s)", self.address, self._dir)

    def gpu_nodes(self) -> list[str]:
        """Node ids of the live GPU nodes (needs ray.init on this cluster)."""
        return [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["Resources"].get("GPU")]

    def stop(self) -> None:
        """Ends the head's process and everything it started; nothing else on the machine. A driver still
        connected loses its GCS, and Ray ends such a process: this one disconnects first."""
        if self._head is None:
            return
        if ray.is_initialized() and ray.get_runtime_context().gcs_address == self.address:
            ray.shutdown()
        family = [self._head, *_descendants(self._head.pid)]
        self._head.terminate()
        try:
            self._head.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        for process in family:
            try:
                process.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        psutil.wait_procs([p for p in family if isinstance(p, psutil.Process)], timeout=STOP_TIMEOUT_S)
        self._head = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def _wait_for_head(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        ready = self._dir / "ray_current_cluster"  # `ray start` writes the address when the head is up
        while not ready.exists():
            if self._head.poll() is not None:
                log = (self._dir / "head.log").read_text()
                raise RuntimeError(f"ray start exited ({self._head.returncode}): {log}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the fake cluster's head did not start within {START_TIMEOUT_S} s")
            time.sleep(0.5)


def sim_config(config: dict, root: Path, port: int, time_factor: float, profile: Path | None = None,
               **args: Any) -> dict:
    """A Serve config (a cluster/*.yaml, loaded) on the sim model source, on fake GPUs, its files under `root`,
    HTTP on `port`; `args` override the app's. Fake nodes have no accelerator type: a stage pinned to one is
    not, here."""
    source = f"sim?time_factor={time_factor}" + (f"&profile={profile}" if profile is not None else "")
    (app,) = config["applications"]
    app_args = app["args"] | dict(model=source, i2v_model=source, device="cpu", reserve_gpus=True,
                                  database_path=str(root / "jobs.sqlite3"), artifact_url=str(root / "artifacts"))
    deployments = [d | {"ray_actor_options": {k: v for k, v in d.get("ray_actor_options", {}).items()
                                              if k != "accelerator_type"}} for d in app["deployments"]]
    return config | {"http_options": {"host": "127.0.0.1", "port": port},
                     "applications": [app | {"args": app_args | args, "deployments": deployments}]}


def deploy(config: dict, timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
    """What `serve run FILE` does, on the connected cluster; returns when the application runs."""
    from ray.serve._private.api import serve_start

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)
    (name,) = [app.name for app in schema.applications]
    deadline = time.monotonic() + timeout_s
    while (status := serve.status().applications.get(name)) is None or status.status != "RUNNING":
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"{name} failed to deploy: {status.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} was not running within {timeout_s} s: {status}")
        time.sleep(SAMPLE_PERIOD_S)


def replicas(app: str) -> dict[str, dict[str, int]]:
    """Each deployment's replicas by state (RUNNING, STARTING, ...)."""
    deployments = serve.status().applications[app].deployments
    return {name: {str(state): count for state, count in d.replica_states.items()} for name, d in deployments.items()}


def gang_nodes(app: str) -> dict[str, str]:
    """The node of each Denoiser replica's placement group (its gang), by group name."""
    return {group["name"]: next(iter(group["bundles_to_node_id"].values()))
            for group in ray.util.placement_group_table().values()
            if group["state"] == "CREATED" and group["name"].startswith(f"SERVE_REPLICA::{app}#Denoiser#")}


@dataclass
class Sample:
    at: float  # time.time()
    running: dict[str, int]  # RUNNING replicas of each deployment
    wanted: dict[str, int]  # replicas running or starting: the autoscaler's target, as it starts them
    gpu_nodes: list[str]


class Sampler:
    """Calls `sample` every `period_s` on a thread of its own while in its block."""

    period_s = SAMPLE_PERIOD_S

    def __enter__(self) -> Sampler:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def sample(self) -> None:
        raise NotImplementedError


@dataclass
class Watch(Sampler):
    """Samples the app's replicas and the cluster's GPU nodes in the background while in its block."""

    cluster: FakeGpuCluster
    app: str
    samples: list[Sample] = field(default_factory=list)

    def sample(self) -> None:
        states = replicas(self.app)
        self.samples.append(Sample(at=time.time(), running={n: s.get("RUNNING", 0) for n, s in states.items()},
                                   wanted={n: sum(c for k, c in s.items() if k != "STOPPING")
                                           for n, s in states.items()},
                                   gpu_nodes=self.cluster.gpu_nodes()))


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _ray_executable() -> str:
    """The `ray` of this interpreter's environment."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else shutil.which("ray") or "ray"
