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


def start_local(config: AppConfig, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False) -> str:
    """Starts Ray on this machine and deploys the app; returns its URL.

    Unless verbose, Ray and Serve say only warnings and errors (no access log), and every Ray worker
    drops the third-party notices that skyreels.logs knows.
    """
    import ray
    from ray import serve

    logger.info("starting Ray and the application on this machine (a minute or so)")
    serve_logging = None if verbose else {"log_level": "WARNING", "enable_access_log": False}
    # Ray's CPUs are logical: a small laptop still fits every stage of the tiny preset.
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, MIN_LOGICAL_CPUS),
        include_dashboard=False,
        logging_level=logging.INFO if verbose else logging.WARNING,
        runtime_env=None if verbose else {"worker_process_setup_hook": "skyreels.logs.drop_known_noise"},
    )
    if not verbose:
        # the driver's Serve client announces each start and deployment at INFO
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": host, "port": port}, logging_config=serve_logging)
    serve.run(build_app(config), name="skyreels", route_prefix="/", blocking=False, logging_config=serve_logging)
    url = f"http://{host}:{port}"
    wait_ready(url)
    logger.info("the application is ready at %s", url)
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
