"""The application on a local Ray with fake GPUs: one instance per test session.

Ray starts once; `serve_app` deploys the full staged application (TextEncoder, a Denoiser gang of
2 fake-GPU workers, Vae, VideoIngress) on a free port. Tests that need other settings deploy a
second application under its own route prefix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from postgres_server import PostgresServer, find_binaries, running_server
from serve_app.launch import wait_ready
from skyreels.parallel.group import free_port

STARTUP_TIMEOUT_S = 240


@dataclass(frozen=True)
class RunningApp:
    url: str
    name: str
    database_path: Path
    artifact_dir: Path


@pytest.fixture(scope="session")
def ray_metrics_port() -> int:
    """Where the session's Ray exports its metrics for Prometheus (ours, through Ray's metrics agent, and Serve's)."""
    return free_port()


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory, ray_metrics_port: int) -> Iterator[int]:
    ray = pytest.importorskip("ray")
    from ray import serve

    # set before Ray starts so that every worker process inherits it
    os.environ["SKYREELS_CACHE_DIR"] = str(tmp_path_factory.mktemp("model-cache"))
    context = ray.init(address="local", num_cpus=16, num_gpus=8, include_dashboard=False, log_to_driver=False,
                       _metrics_export_port=ray_metrics_port,
                       # each process hands its metrics to the agent every second (Ray's default: 10 s)
                       _system_config={"metrics_report_interval_ms": 1000})
    # the state API (list_actors) must find this cluster, not another one on the machine
    os.environ["RAY_ADDRESS"] = context.address_info["gcs_address"]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()
    del os.environ["RAY_ADDRESS"]


def deploy(port: int, root: Path, name: str, route_prefix: str, **settings) -> RunningApp:
    from ray import serve

    from serve_app.app import AppConfig, build_app

    root.mkdir(parents=True, exist_ok=True)
    # fake GPU resources: the gang's {"GPU": 1} bundles are scheduled as on a GPU node
    config = AppConfig(reserve_gpus=True, database_path=str(root / "jobs.sqlite3"), artifact_url=str(root / "artifacts"), **settings)
    serve.run(build_app(config), name=name, route_prefix=route_prefix, blocking=False)
    app = RunningApp(url=f"http://127.0.0.1:{port}{route_prefix.rstrip('/')}", name=name,
                     database_path=root / "jobs.sqlite3", artifact_dir=root / "artifacts")
    wait_ready(app.url, STARTUP_TIMEOUT_S)
    return app


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session app's one LoRA adapter, `ink` (a LoRA of the tiny preset's DiT, made with PEFT)."""
    from skyreels.tiny import make_tiny_lora

    return make_tiny_lora(tmp_path_factory.mktemp("loras") / "ink", seed=5)


@pytest.fixture(scope="session")
def serve_app(ray_local: int, tmp_path_factory: pytest.TempPathFactory, tiny_adapter: Path) -> RunningApp:
    # preempt_after_s 1: an interactive job pauses the batch jobs (tests/serve_app/test_priorities_api.py)
    return deploy(ray_local, tmp_path_factory.mktemp("app"), "skyreels", "/", gpus_per_replica=2, max_queued_jobs=32,
                  preempt_after_s=1.0,
                  lora_url=str(tiny_adapter.parent.parent))


@pytest.fixture(scope="session")
def serve_base_url(serve_app: RunningApp) -> str:
    return serve_app.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (Debian's `postgresql` package)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[dev]'")
    bin_dir = find_binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
    # not under pytest's base temp: another pytest session on the machine resets that to 0700, which the postgres
    # user then cannot reach (pg_ctl fails mid-session)
    root = Path(tempfile.mkdtemp(prefix="skyreels-postgres-"))
    try:
        with running_server(bin_dir, root) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database on the session's server."""
    return postgres_server.new_database()
