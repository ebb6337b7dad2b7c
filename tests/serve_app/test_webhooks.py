"""Webhook deliveries to a real local HTTP receiver that verifies them with the `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve_app.requests import InvalidRequest
from serve_app.schemas import WebhookDelivery
from serve_app.webhooks import WebhookConfig, WebhookSender, check_destination, new_secret

standardwebhooks = pytest.importorskip("standardwebhooks")

LOOPBACK = ["127.0.0.0/8"]


class Receiver:
    """An HTTP server that answers the first `fail_first` POSTs 500, then verifies and keeps each one."""

    def __init__(self, secret: str, fail_first: int = 0) -> None:
        self.verifier = standardwebhooks.Webhook(secret)
        self.fail_first, self.posts, self.verified = fail_first, 0, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.posts += 1
                status = 500 if receiver.posts <= receiver.fail_first else receiver.verify(body, self.headers)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def verify(self, body: bytes, headers: object) -> int:
        try:
            self.verified.append((self.verifier.verify(body, dict(headers)), dict(headers)))
        except standardwebhooks.webhooks.WebhookVerificationError:
            return 400
        return 204

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def secret() -> str:
    return new_secret()


def deliver(config: WebhookConfig, url: str, job: dict) -> tuple[list[WebhookDelivery], dict]:
    recorded: dict[str, list[WebhookDelivery]] = {}
    sender = WebhookSender(config, lambda job_id, deliveries: recorded.__setitem__(job_id, list(deliveries)))
    return asyncio.run(sender.deliver(url, job)), recorded


JOB = {"id": "video_0123", "status": "completed", "progress": 100}


def test_a_signed_delivery_is_verified_after_a_failed_first_one(secret: str) -> None:
    config = WebhookConfig(secret=secret, allowed_networks=LOOPBACK, retry_delays_s=[0.05, 0.05])
    with Receiver(secret, fail_first=1) as receiver:
        deliveries, recorded = deliver(config, receiver.url, JOB)
    assert [d.status_code for d in deliveries] == [500, 204] and recorded["video_0123"] == deliveries
    assert deliveries[0].attempted_at <= deliveries[1].attempted_at and deliveries[1].delivered
    ((payload, headers),) = receiver.verified
    assert payload["type"] == "video.completed" and payload["data"] == JOB
    assert headers["webhook-id"] == "msg_video_0123"


def test_a_wrong_secret_is_refused_by_the_receiver_and_retried_until_given_up(secret: str) -> None:
    config = WebhookConfig(secret=new_secret(), allowed_networks=LOOPBACK, retry_delays_s=[0.01])
    with Receiver(secret) as receiver:
        deliveries, _ = deliver(config, receiver.url, JOB)
    assert [d.status_code for d in deliveries] == [400, 400] and not receiver.verified


def test_an_unreachable_receiver_is_recorded_as_an_error(secret: str) -> None:
    config = WebhookConfig(secret=secret, allowed_networks=LOOPBACK, retry_delays_s=[])
    with Receiver(secret) as receiver:
        url = receiver.url
    (delivery,) = deliver(config, url, JOB)[0]
    assert delivery.status_code is None and "ConnectError" in delivery.error


def test_private_destinations_are_refused_unless_allowed(secret: str) -> None:
    for url in ("http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://169.254.169.254/latest", "http://[::1]/",
                "ftp://example.com/", "http://localhost/x"):
        with pytest.raises(InvalidRequest):
            asyncio.run(check_destination(url, []))
    asyncio.run(check_destination("http://127.0.0.1:9/hook", WebhookConfig(allowed_networks=LOOPBACK).allowed_networks))
    (delivery,) = deliver(WebhookConfig(secret=secret, retry_delays_s=[]), "http://127.0.0.1:9/hook", JOB)[0]
    assert delivery.status_code is None and "non-public" in delivery.error


def test_a_job_gets_its_url_or_the_default_and_none_without_a_secret(secret: str) -> None:
    sender = WebhookSender(WebhookConfig(secret=secret, default_url="http://127.0.0.1:1/default",
                                         allowed_networks=LOOPBACK), lambda *_: None)
    assert asyncio.run(sender.check(None)) == "http://127.0.0.1:1/default"
    assert asyncio.run(sender.check("http://127.0.0.2/mine")) == "http://127.0.0.2/mine"
    with pytest.raises(InvalidRequest) as disabled:
        asyncio.run(WebhookSender(WebhookConfig(), lambda *_: None).check("http://127.0.0.1/x"))
    assert disabled.value.code == "webhooks_disabled"
    assert asyncio.run(WebhookSender(WebhookConfig(), lambda *_: None).check(None)) is None
    with pytest.raises(ValueError):
        WebhookConfig(secret="not-whsec")


def test_the_request_goes_to_the_address_checked_when_the_name_rebinds(secret: str) -> None:
    """A resolver that answers a receiver's (allowed) address once, then the cloud metadata address: the
    delivery goes to the address that was checked, never resolved again; the next one is refused."""
    answers = iter([["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        assert host == "hooks.rebind.test"
        return next(answers, ["169.254.169.254"])

    config = WebhookConfig(secret=secret, allowed_networks=LOOPBACK, retry_delays_s=[])
    recorded: dict[str, list[WebhookDelivery]] = {}
    sender = WebhookSender(config, lambda job_id, deliveries: recorded.__setitem__(job_id, deliveries), rebinding)
    with Receiver(secret) as receiver:
        url = receiver.url.replace("127.0.0.1", "hooks.rebind.test")
        (first,) = asyncio.run(sender.deliver(url, JOB))
        (second,) = asyncio.run(sender.deliver(url, {**JOB, "id": "video_4567"}))
    assert first.status_code == 204 and receiver.posts == 1
    ((payload, headers),) = receiver.verified
    assert payload["data"] == JOB and {name.lower(): value for name, value in headers.items()}["host"] == \
        url.split("/")[2]
    assert second.status_code is None and "169.254.169.254, a non-public address" in second.error


def test_deliveries_a_stopped_replica_left_pending_are_resumed_from_the_store(secret: str, tmp_path) -> None:
    """What the store records is all a replica needs (after a restart, or another replica's): overdue deliveries
    resume at the next attempt; one still due soon is left to the replica sending it; finished ones stay done."""
    from serve_app.requests import new_job
    from serve_app.schemas import JobStatus, VideoCreateParams
    from serve_app.store import open_store
    from stand_in_stages import SERVED

    config = WebhookConfig(secret=secret, allowed_networks=LOOPBACK, retry_delays_s=[60, 60], timeout_s=1,
                           resume_after_s=2)
    store = open_store(str(tmp_path / "jobs.sqlite3"))
    now = time.time()

    def ended(name: str, ago_s: float, *made: WebhookDelivery) -> str:
        job, _ = new_job(VideoCreateParams(prompt=name, size="64x64", num_frames=9, num_inference_steps=1), None,
                         SERVED)
        store.add(job.model_copy(update={"status": JobStatus.COMPLETED, "completed_at": now - ago_s,
                                         "webhook_url": receiver.url, "webhook_deliveries": list(made)}))
        return job.id

    async def resume() -> list[str]:
        sender = WebhookSender(config, lambda job_id, made: store.update(job_id, webhook_deliveries=made))
        resumed = await sender.resume_overdue(store.ended_since, lambda job: job.model_dump(mode="json"))
        while not all(store.get(job_id).webhook_deliveries[-1].delivered for job_id in resumed):  # in the background
            await asyncio.sleep(0.05)
        await sender.close()
        return resumed

    with Receiver(secret) as receiver:
        retried = ended("a retry due 30 s ago", 100, WebhookDelivery(attempt=1, attempted_at=now - 90, status_code=500))
        never_sent = ended("ended while no replica ran", 100)
        ended("ended just now: its replica sends it", 1)
        ended("delivered", 100, WebhookDelivery(attempt=1, attempted_at=now - 90, status_code=204))
        ended("gone", 100, WebhookDelivery(attempt=1, attempted_at=now - 90, status_code=410))
        assert sorted(asyncio.run(resume())) == sorted([retried, never_sent])
    assert [(d.attempt, d.status_code) for d in store.get(retried).webhook_deliveries] == [(1, 500), (2, 204)]
    assert [(d.attempt, d.status_code) for d in store.get(never_sent).webhook_deliveries] == [(1, 204)]
    assert sorted(payload["data"]["id"] for payload, _ in receiver.verified) == sorted([retried, never_sent])
