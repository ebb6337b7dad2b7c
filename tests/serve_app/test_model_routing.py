"""Serve's model multiplexing keeps each gang on one model: with two gangs serving T2V and I2V jobs in turn,
the jobs go to the gang that holds their model and the weights swap once, not on every other job."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from serve_app.client import VideoClient
from skyreels.models import SERVED_MODEL_IDS
from skyreels.request import Task

pytestmark = pytest.mark.slow

SIM = "sim?time_factor=0.01"
SMALL = dict(size="64x64", num_frames=9, num_inference_steps=4)
ROUNDS = 3


@pytest.fixture(scope="module")
def two_gangs(ray_local, tmp_path_factory):
    from ray import serve

    from conftest import RunningApp, STARTUP_TIMEOUT_S
    from serve_app.app import AppConfig, build_app
    from serve_app.launch import wait_ready

    root = tmp_path_factory.mktemp("routing")
    config = AppConfig(model=SIM, i2v_model=SIM, gpus_per_replica=1, reserve_gpus=True,
                       database_path=str(root / "jobs.sqlite3"), artifact_url=str(root / "artifacts"))
    app = build_app(config)
    # two Denoiser replicas (gangs of one), as a cluster config's num_replicas would make them
    denoiser = app._bound_deployment.init_args[1]
    denoiser._bound_deployment = denoiser._bound_deployment.options(num_replicas=2)
    serve.run(app, name="routing", route_prefix="/routing", blocking=False)
    url = f"http://127.0.0.1:{ray_local}/routing"
    wait_ready(url, STARTUP_TIMEOUT_S)
    yield RunningApp(url=url, name="routing", database_path=root / "jobs.sqlite3", artifact_dir=root / "artifacts")
    serve.delete("routing")


def test_each_model_stays_on_the_gang_that_holds_it(two_gangs, first_frame: Image.Image) -> None:
    png = io.BytesIO()
    first_frame.save(png, format="PNG")
    finished = []
    with VideoClient(two_gangs.url, timeout_s=60) as client:
        for round_ in range(ROUNDS):  # one at a time: each job finds both gangs free
            for model in (SERVED_MODEL_IDS[Task.T2V], SERVED_MODEL_IDS[Task.I2V]):
                image = png.getvalue() if model == SERVED_MODEL_IDS[Task.I2V] else None
                job = client.submit(f"round {round_}", image=image, model=model, seed=round_, **SMALL)
                finished.append(client.wait(job["id"], timeout_s=120))
    assert [job["status"] for job in finished] == ["completed"] * 2 * ROUNDS
    swapped = [job["model"] for job in finished if job["metrics"].get("weights", 0) > 0]
    # both gangs start on the T2V weights: the first I2V job swaps one of them, and that gang keeps I2V
    assert swapped == [SERVED_MODEL_IDS[Task.I2V]]
