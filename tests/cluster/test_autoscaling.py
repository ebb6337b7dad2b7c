"""Each stage autoscales on a fake multi-node GPU cluster (Ray's own autoscaler) with the sim model source.

One cluster and one application for the module (cluster/serve_config.sim.yaml on fake GPUs). A GPU node has
8 fake GPUs and 1 logical CPU, which holds one DiT gang (the replica's 0.1 + 2 workers x 0.45), so that a
second gang needs a second node, as a second gang of 6 does on a real 8-GPU node. The sim runs at 1/100 of
real time (a job of the workload of record lasts 3.9 s on a gang of 2); its profile has a slow text encoder
(0.2 s a prompt) so that text alone can load the TextEncoder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402
from sim_cluster import ClusterSpec, FakeGpuCluster, Watch, deploy, gang_nodes, sim_config  # noqa: E402

from serve_app.client import VideoClient  # noqa: E402
from serve_app.launch import wait_ready  # noqa: E402
from skyreels.parallel.group import free_port  # noqa: E402
from skyreels.sim.profile import published_a800  # noqa: E402

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

SIM_CONFIG = Path(__file__).resolve().parents[2] / "cluster" / "serve_config.sim.yaml"
APP = "skyreels"
HEAD_ONLY = {"node:__internal_head__": 0.001}
BURST_JOBS = 10


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Polls until `condition` holds; the time it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no {what} within {timeout_s} s")
        time.sleep(0.25)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeGpuCluster]:
    if ray.is_initialized():
        pytest.skip("this process is already connected to another Ray")
    spec = ClusterSpec(head_cpus=4, gpu_node_cpus=1, min_gpu_nodes=1, max_gpu_nodes=2, idle_timeout_s=5)
    with FakeGpuCluster(spec) as cluster:
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            yield cluster
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def app_url(cluster: FakeGpuCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("sim-app")
    profile = root / "slow_text.json"
    published_a800().model_copy(update={"text_encode_seconds": 40.0}).save(profile)
    port = free_port()
    config = sim_config(yaml.safe_load(SIM_CONFIG.read_text()), root, port, time_factor=0.01, profile=profile,
                        worker_cpus=0.45)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] in ("TextEncoder", "Vae"):  # the GPU nodes' one CPU is the gang's
            deployment["ray_actor_options"]["resources"] = HEAD_ONLY
        if deployment["name"] == "Denoiser":
            deployment["autoscaling_config"]["max_replicas"] = 2
    deploy(config)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout_s=240)
    return url


def test_text_load_scales_the_text_encoder_and_not_the_denoiser(cluster: FakeGpuCluster, app_url: str) -> None:
    encoder = serve.get_deployment_handle("TextEncoder", app_name=APP)
    with Watch(cluster, APP) as watch:
        answers = [encoder.encode.remote(f"text load {i}", None) for i in range(80)]
        wait_for(lambda: any(s.wanted["TextEncoder"] >= 2 for s in watch.samples), 60, "second TextEncoder")
        for answer in answers:
            answer.result(timeout_s=120)
    assert max(s.wanted["Denoiser"] for s in watch.samples) == 1


def test_a_burst_adds_a_gang_on_a_node_the_autoscaler_adds_then_both_go(cluster: FakeGpuCluster,
                                                                        app_url: str) -> None:
    wait_for(lambda: len(gang_nodes(APP)) == 1, 60, "single gang before the burst")
    nodes_before = set(cluster.gpu_nodes())
    with VideoClient(app_url) as client, Watch(cluster, APP) as watch:
        burst = time.time()
        jobs = [client.submit(f"burst {i}", seed=i)["id"] for i in range(BURST_JOBS)]
        wait_for(lambda: len(gang_nodes(APP)) == 2, 120, "second gang")
        (new_node,) = set(gang_nodes(APP).values()) - nodes_before
        finished = [client.wait(job, timeout_s=300, raise_on_failure=False) for job in jobs]
        assert [job["status"] for job in finished] == ["completed"] * BURST_JOBS
        wait_for(lambda: watch.samples[-1].wanted["Denoiser"] == 1, 60, "scale-down to one gang")
        wait_for(lambda: len(cluster.gpu_nodes()) == 1, 60, "idle node leaving")
    assert new_node not in nodes_before

    def first(condition: Callable) -> float:
        return next(s.at for s in watch.samples if condition(s)) - burst

    logger.warning("burst of %d jobs: second gang asked for after %.1f s, its node up after %.1f s, serving "
                   "after %.1f s; all done after %.1f s", BURST_JOBS, first(lambda s: s.wanted["Denoiser"] >= 2),
                   first(lambda s: len(s.gpu_nodes) >= 2), first(lambda s: s.running["Denoiser"] >= 2),
                   max(job["completed_at"] for job in finished) - burst)
