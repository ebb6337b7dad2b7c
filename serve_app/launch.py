"""Start the application on a local Ray (for `skyreels serve` and `skyreels demo`)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import httpx

from serve_app.app import AppConfig, build_app
from serve_app.client import VideoClient

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 600
MIN_LOGICAL_CPUS = 8


def start_local(config: AppConfig, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Starts Ray on this machine and deploys the app; returns its URL."""
    import ray
    from ray import serve

    # Ray's CPUs are logical: a small laptop still fits every stage of the tiny preset.
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, MIN_LOGICAL_CPUS), include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name="skyreels", route_prefix="/", blocking=False)
    url = f"http://{host}:{port}"
    wait_ready(url)
    return url


def run_demo(url: str, prompt: str, out: Path, **fields) -> Path:
    """Submits one job, shows its progress, saves the video."""
    from tqdm import tqdm

    with VideoClient(url) as client:
        job = client.submit(prompt, **fields)
        with tqdm(total=100, unit="%", desc=f"job {job['id'][:14]}") as bar:
            def show(update: dict) -> None:
                bar.set_postfix_str(update["phase"])
                bar.update(update["progress"] - bar.n)

            job = client.wait(job["id"], on_update=show)
        out.write_bytes(client.content(job["id"]))
    logger.info("job %s: %s", job["id"], {k: round(v, 3) for k, v in job["metrics"].items()})
    return out


def wait_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Polls /readyz until the application answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the application at {url} was not ready within {timeout_s} s")
