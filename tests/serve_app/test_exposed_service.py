"""The app with API keys, per-key limits, webhooks, idempotency and retention, end to end over HTTP on local Ray:
one extra application, its keys configured through AppConfig."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from serve_app.auth import AccessConfig
from serve_app.requests import UploadLimits
from serve_app.retention import RetentionConfig
from serve_app.webhooks import WebhookConfig, new_secret
from conftest import RunningApp, deploy
from test_webhooks import LOOPBACK, Receiver

pytestmark = pytest.mark.slow

KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"
SECRET = new_secret()
TTL_S = 8.0
SMALL = {"size": "64x64", "num_frames": 9, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def keyed_app(ray_local: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    from ray import serve

    app = deploy(ray_local, tmp_path_factory.mktemp("keyed"), "keyed", "/keyed", gpus_per_replica=1,
                 max_running_jobs=1,
                 access=AccessConfig(api_keys=[KEY_A, KEY_B], max_jobs_in_flight=2, max_submits_per_minute=20),
                 uploads=UploadLimits(max_bytes=10_000),
                 webhooks=WebhookConfig(secret=SECRET, allowed_networks=LOOPBACK, retry_delays_s=[0.5, 1.0]),
                 retention=RetentionConfig(ttl_s=TTL_S, sweep_every_s=0.5))
    yield app
    serve.delete("keyed")


def as_key(app: RunningApp, key: str | None) -> httpx.Client:
    return httpx.Client(base_url=app.url, timeout=60, headers={"Authorization": f"Bearer {key}"} if key else {})


def job_of(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/videos/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def test_keys_ownership_webhook_idempotency_and_expiry(keyed_app: RunningApp) -> None:
    with as_key(keyed_app, None) as anonymous, as_key(keyed_app, "wrong") as wrong, \
            as_key(keyed_app, KEY_A) as a, as_key(keyed_app, KEY_B) as b, Receiver(SECRET, fail_first=1) as receiver:
        assert anonymous.get("/healthz").status_code == 200
        for client in (anonymous, wrong):
            refused = client.get("/v1/videos", headers={"X-Request-ID": "req-401"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
            assert refused.headers["x-request-id"] == "req-401"
        body = {"prompt": "a cat", "seed": 3, "webhook_url": receiver.url, **SMALL}
        created = a.post("/v1/videos", json=body, headers={"Idempotency-Key": "retry-1"})
        assert created.status_code == 202 and created.headers["x-request-id"]
        job = created.json()
        retried = a.post("/v1/videos", json=body, headers={"Idempotency-Key": "retry-1"})
        assert retried.status_code == 202 and retried.json()["id"] == job["id"]
        reused = a.post("/v1/videos", json={**body, "seed": 4}, headers={"Idempotency-Key": "retry-1"})
        assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"

        assert b.get(f"/v1/videos/{job['id']}").status_code == 404
        assert b.delete(f"/v1/videos/{job['id']}").status_code == 404
        assert b.get("/v1/videos").json()["data"] == []
        assert [v["id"] for v in a.get("/v1/videos").json()["data"]] == [job["id"]]

        done = until(lambda: (j := job_of(a, job["id"]))["status"] == "completed" and j, 180, "the job to complete")
        assert done["expires_at"] - done["completed_at"] == pytest.approx(TTL_S, abs=1)
        ((payload, _),) = until(lambda: receiver.verified, 30, "a verified webhook")
        assert payload["type"] == "video.completed" and payload["data"]["id"] == job["id"]
        deliveries = until(lambda: len(d := job_of(a, job["id"])["webhook_deliveries"]) == 2 and d, 30,
                           "both deliveries recorded")
        assert [d["status_code"] for d in deliveries] == [500, 204]

        until(lambda: a.get(f"/v1/videos/{job['id']}").status_code == 404, TTL_S + 30, "the expired job to go")


def test_per_key_limits_and_upload_limits(keyed_app: RunningApp) -> None:
    with as_key(keyed_app, KEY_A) as a, as_key(keyed_app, KEY_B) as b:
        jobs = [a.post("/v1/videos", json={"prompt": f"job {i}", **SMALL}) for i in range(2)]
        assert [r.status_code for r in jobs] == [202, 202]
        over = a.post("/v1/videos", json={"prompt": "one too many", **SMALL})
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert over.json()["error"]["code"] == "too_many_jobs"
        big = b.post("/v1/videos", files={"input_reference": ("big.png", b"\x89PNG" + b"0" * 20_000)},
                     data={"prompt": "too big"})
        assert big.status_code == 413 and "Traceback" not in big.text
        for response in jobs:
            assert a.delete(f"/v1/videos/{response.json()['id']}").status_code == 200
