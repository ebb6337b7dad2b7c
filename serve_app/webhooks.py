"""Webhooks: the final job POSTed to its webhook_url, signed per the Standard Webhooks specification
(https://www.standardwebhooks.com): `webhook-id`, `webhook-timestamp` and `webhook-signature` =
`v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")), the secret being the base64 after `whsec_`.

A delivery is retried with backoff until the receiver answers 2xx (410 Gone: never again); every attempt
is recorded on the job. Destinations must resolve to public addresses, or to the networks allowed; the request
goes to the address that passed that check (a name that resolves again could answer otherwise: DNS rebinding).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, SecretStr, field_validator, model_validator

from serve_app.requests import InvalidRequest
from serve_app.schemas import Job, WebhookDelivery

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
RESOLVE_TIMEOUT_S = 5.0
RESUME_HORIZON_S = 86400.0  # deliveries left pending by a stopped service are resumed for jobs that ended since


class WebhookConfig(BaseModel):
    """AppConfig's `webhooks`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: SecretStr | None = Field(None, description="`whsec_` + base64 of the signing key (give receivers "
                                     "the same string). None: jobs may not have a webhook_url.")
    default_url: str | None = Field(None, description="Where jobs without their own webhook_url are announced.")
    allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list, description="Non-public networks webhooks may go to (e.g. 10.0.0.0/8, 127.0.0.0/8); "
        "public addresses are always allowed, private, loopback and link-local ones only when listed here.")
    retry_delays_s: list[float] = Field([5, 30, 120, 600, 1800], description="Waits before each retry of a "
                                        "delivery the receiver did not accept (2xx).")
    timeout_s: float = Field(10.0, gt=0, description="One delivery attempt's limit.")
    resume_after_s: float = Field(30.0, gt=0, description="A delivery this long past due (its ingress replica "
                                  "stopped or restarted) is resumed by any replica, from the job store.")

    @model_validator(mode="after")
    def _resume_after_an_attempt(self) -> WebhookConfig:
        if self.resume_after_s <= self.timeout_s:
            raise ValueError(f"resume_after_s ({self.resume_after_s}) must exceed timeout_s ({self.timeout_s}): an "
                             "attempt in flight on a live replica is not resumed elsewhere")
        return self

    @field_validator("secret")
    @classmethod
    def _is_whsec(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None:
            signing_key(secret)
        return secret


def signing_key(secret: SecretStr) -> bytes:
    value = secret.get_secret_value()
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX}")
    return base64.b64decode(value.removeprefix(SECRET_PREFIX), validate=True)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(signed).decode()


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system's resolver gives `host`."""
    infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                   RESOLVE_TIMEOUT_S)
    return [info[4][0] for info in infos]


@dataclass(frozen=True)
class Destination:
    """Where a checked URL's request goes: `url` names the address that passed the check instead of the host, so
    that nothing resolves the name again (DNS rebinding); `host` is the Host header and the TLS server name."""

    url: str
    host: str
    server_name: str


async def check_destination(url: str, allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
                            resolve: Resolver = system_resolver) -> Destination:
    """`url` pinned to its host's first address; InvalidRequest unless every address the host resolves to is
    public or in `allowed`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"webhook_url must be an http(s) URL, got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = [ipaddress.ip_address(address.split("%")[0]) for address in await resolve(parts.hostname, port)]
    except (OSError, UnicodeError, ValueError, asyncio.TimeoutError) as error:
        raise InvalidRequest(f"webhook_url: cannot resolve {parts.hostname!r} ({error or 'timed out'})") from error
    if not addresses:
        raise InvalidRequest(f"webhook_url: {parts.hostname!r} has no address")
    for address in addresses:
        if not address.is_global and not any(address in network for network in allowed):
            raise InvalidRequest(f"webhook_url: {parts.hostname} is {address}, a non-public address this server "
                                 "does not send webhooks to", 422, "webhook_not_allowed")
    pinned = f"[{addresses[0]}]" if addresses[0].version == 6 else str(addresses[0])
    host = parts.netloc.rpartition("@")[2]
    return Destination(url=parts._replace(netloc=f"{pinned}:{port}").geturl(), host=host,
                       server_name=parts.hostname)


class WebhookSender:
    """Delivers jobs' final records in the background; `record(job_id, deliveries)` stores each attempt."""

    def __init__(self, config: WebhookConfig, record: Callable[[str, list[WebhookDelivery]], None],
                 resolve: Resolver = system_resolver) -> None:
        self.config, self.record, self.resolve = config, record, resolve
        self._key = signing_key(config.secret) if config.secret is not None else None
        self._tasks: set[asyncio.Task] = set()
        self._delivering: set[str] = set()  # jobs whose delivery runs here

    async def check(self, url: str | None) -> str | None:
        """The webhook_url a new job gets (its own or the default), refused (422) if it may not have one."""
        url = url or self.config.default_url
        if url is None:
            return None
        if self._key is None:
            raise InvalidRequest("this server sends no webhooks (no webhook secret is configured)", 422,
                                 "webhooks_disabled")
        await check_destination(url, self.config.allowed_networks, self.resolve)
        return url

    def send(self, url: str, job: dict[str, Any], made: list[WebhookDelivery] | None = None) -> None:
        """POSTs `job` (the API's JSON of a job that has ended) to `url`, with retries, in the background; `made`:
        the attempts a replica made before (resumed), so that the next one is the attempt after them."""
        if job["id"] in self._delivering:
            return
        self._delivering.add(job["id"])
        self._spawn(self.deliver(url, job, made))

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(self, url: str, job: dict[str, Any],
                      made: list[WebhookDelivery] | None = None) -> list[WebhookDelivery]:
        payload = {"type": f"video.{job['status']}", "timestamp": datetime.now(timezone.utc).isoformat(),
                   "data": job}
        body = json.dumps(payload).encode()
        message_id = f"msg_{job['id']}"  # the same on every retry: receivers drop duplicates by it
        deliveries = list(made or [])
        try:
            async with httpx.AsyncClient(timeout=self.config.timeout_s, follow_redirects=False) as client:
                for attempt, delay in enumerate([0.0, *self.config.retry_delays_s[len(deliveries):]],
                                                start=len(deliveries) + 1):
                    await asyncio.sleep(delay)
                    delivery = await self._attempt(client, url, message_id, body, attempt)
                    deliveries.append(delivery)
                    try:
                        self.record(job["id"], deliveries)
                    except KeyError:
                        logger.info("job %s was deleted; its webhook is not retried", job["id"])
                        break
                    if delivery.delivered or delivery.status_code == 410:
                        break
                    logger.warning("webhook of job %s to %s: attempt %d failed (%s)", job["id"], url, attempt,
                                   delivery.error or delivery.status_code)
        finally:
            self._delivering.discard(job["id"])
        return deliveries

    def due_at(self, job: Job) -> float | None:
        """When the job's next webhook attempt is due, read from its record; None when none is: no webhook, not
        ended, delivered, gone (410), or every retry made."""
        if job.webhook_url is None or not job.status.is_terminal or job.completed_at is None:
            return None
        made = job.webhook_deliveries
        if not made:
            return job.completed_at
        if made[-1].delivered or made[-1].status_code == 410 or len(made) > len(self.config.retry_delays_s):
            return None
        return made[-1].attempted_at + self.config.retry_delays_s[len(made) - 1]

    def resume(self, ended_since: Callable[[float], list[Job]], view: Callable[[Job], dict[str, Any]]) -> None:
        """In the background, for good: delivers what the job store says is overdue by resume_after_s, the
        deliveries of a replica that stopped (every replica does this: the one that resumes first records its
        attempt; at worst two send the same message, which receivers drop by its webhook-id).
        `ended_since(t)`: the jobs that ended at or after unix time t; `view`: a job's JSON for the receiver."""
        if self._key is not None:
            self._spawn(self._resume_forever(ended_since, view))

    async def _resume_forever(self, ended_since: Callable[[float], list[Job]],
                              view: Callable[[Job], dict[str, Any]]) -> None:
        # at start, what the whole service left pending while it was down; then what a replica that stopped left
        horizon_s = RESUME_HORIZON_S
        while True:
            try:
                await self.resume_overdue(ended_since, view, horizon_s)
                horizon_s = self.pending_span_s
            except Exception:  # noqa: BLE001 - a store hiccup must not stop the next look
                logger.exception("looking for overdue webhooks failed")
            await asyncio.sleep(self.config.resume_after_s / 2)

    @property
    def pending_span_s(self) -> float:
        """The longest a job's delivery stays pending after it ended, on replicas that keep running."""
        config = self.config
        return sum(config.retry_delays_s) + (len(config.retry_delays_s) + 1) * config.timeout_s + \
            2 * config.resume_after_s

    async def resume_overdue(self, ended_since: Callable[[float], list[Job]], view: Callable[[Job], dict[str, Any]],
                             horizon_s: float = RESUME_HORIZON_S) -> list[str]:
        """Starts the deliveries overdue now, of the jobs that ended within `horizon_s`; the ids of their jobs."""
        now = time.time()
        resumed = []
        for job in await asyncio.to_thread(ended_since, now - horizon_s):
            due = self.due_at(job)
            if due is not None and due < now - self.config.resume_after_s and job.id not in self._delivering:
                logger.info("webhook of job %s: resuming at attempt %d", job.id, len(job.webhook_deliveries) + 1)
                self.send(job.webhook_url, view(job), job.webhook_deliveries)
                resumed.append(job.id)
        return resumed

    async def _attempt(self, client: httpx.AsyncClient, url: str, message_id: str, body: bytes,
                       attempt: int) -> WebhookDelivery:
        now = time.time()
        try:
            # again: DNS may have changed; the request goes to the address checked now, not to a new answer
            destination = await check_destination(url, self.config.allowed_networks, self.resolve)
            timestamp = int(now)
            response = await client.post(destination.url, content=body, headers={
                "host": destination.host, "content-type": "application/json", "webhook-id": message_id,
                "webhook-timestamp": str(timestamp), "webhook-signature": signature(self._key, message_id, timestamp,
                                                                                    body)},
                extensions={"sni_hostname": destination.server_name})
            return WebhookDelivery(attempt=attempt, attempted_at=now, status_code=response.status_code)
        except (httpx.HTTPError, InvalidRequest) as error:
            message = error.message if isinstance(error, InvalidRequest) else f"{type(error).__name__}: {error}"
            return WebhookDelivery(attempt=attempt, attempted_at=now, error=message)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
