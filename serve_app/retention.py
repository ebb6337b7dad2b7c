"""Retention: a job's record and files are deleted `ttl_s` after it ended; jobs still queued or running never."""

from __future__ import annotations

import asyncio
import logging
import time

from pydantic import BaseModel, ConfigDict, Field

from serve_app.schemas import Job
from serve_app.store import JobStore
from skyreels.artifacts import ArtifactStore

logger = logging.getLogger(__name__)


class RetentionConfig(BaseModel):
    """AppConfig's `retention`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttl_s: float | None = Field(None, gt=0, description="Seconds a finished job (completed, failed, cancelled) "
                                "and its files are kept; None: kept until deleted.")
    sweep_every_s: float = Field(60.0, gt=0, description="How often expired jobs are looked for.")


def expires_at(job: Job, ttl_s: float | None) -> float | None:
    if ttl_s is None or not job.status.is_terminal or job.completed_at is None:
        return None
    return job.completed_at + ttl_s


async def sweep(store: JobStore, artifacts: ArtifactStore, ttl_s: float, now: float | None = None) -> list[str]:
    """Deletes the jobs that ended more than `ttl_s` ago, and their files; their ids."""
    swept = []
    for job_id in store.finished_before((time.time() if now is None else now) - ttl_s):
        if store.delete(job_id, finished_only=True):
            await asyncio.to_thread(artifacts.delete, job_id)
            swept.append(job_id)
    if swept:
        logger.info("retention: deleted %d expired jobs", len(swept))
    return swept


async def sweep_forever(store: JobStore, artifacts: ArtifactStore, config: RetentionConfig) -> None:
    while config.ttl_s is not None:
        try:
            await sweep(store, artifacts, config.ttl_s)
        except Exception:  # noqa: BLE001 - a failed sweep (storage hiccup) must not stop the next ones
            logger.exception("retention sweep failed")
        await asyncio.sleep(config.sweep_every_s)
