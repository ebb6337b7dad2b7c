"""Why a job's run ended in error, and whether running it again can help.

Every job is deterministic (same request and seed, same video on any gang), so a run cut off by
infrastructure (a lost gang worker or stage replica, a node, a stage that stopped answering, the
ingress itself) simply runs again. An error the stage raised itself (a model error, input found bad
late) would repeat: the job ends at once.
"""

from __future__ import annotations

from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors

from deployments.errors import GangWorkerDied
from serve_app.schemas import ErrorCode, JobError

MESSAGE_LIMIT = 500

# A stage replica, its worker process or its node is gone: Serve or Ray brings up another.
_LOST = (ray_errors.RayActorError, ray_errors.WorkerCrashedError, ray_errors.NodeDiedError,
         ray_errors.LocalRayletDiedError, ray_errors.ObjectLostError, ray_errors.OwnerDiedError,
         serve_errors.DeploymentUnavailableError, serve_errors.ReplicaUnavailableError)


class StageTimeout(Exception):
    """A stage call, or the gap between two denoising steps, took longer than the configured limit."""


def job_error(error: BaseException) -> JobError:
    """The job-facing error of a failed run; its code says whether to run again (ErrorCode.is_infrastructure)."""
    cause = _cause(error)
    if isinstance(cause, GangWorkerDied):
        return JobError(code=ErrorCode.WORKER_DIED, message=str(cause)[:MESSAGE_LIMIT])
    if isinstance(cause, StageTimeout):
        return JobError(code=ErrorCode.STAGE_TIMEOUT, message=str(cause)[:MESSAGE_LIMIT])
    if isinstance(cause, _LOST):
        return JobError(code=ErrorCode.STAGE_LOST, message=f"{type(cause).__name__}: {cause}"[:MESSAGE_LIMIT])
    return JobError(code=ErrorCode.STAGE_FAILED, message=f"{type(cause).__name__}: {cause}"[:MESSAGE_LIMIT])


def _cause(error: BaseException) -> BaseException:
    """A stage's own exception arrives wrapped in Ray's RayTaskError, whose text is Ray's traceback."""
    while isinstance(error, ray_errors.RayTaskError) and isinstance(error.cause, BaseException):
        error = error.cause
    return error
