"""An honest wait: a running job's time left, from the pace of its own denoising steps; a queued job's, from the
estimated GPU-seconds of the queue up to it at the pace of the last completed job."""

from __future__ import annotations

from serve_app.schemas import Job, JobStatus
from serve_app.store import QueuePlace
from skyreels.progress import Phase


class EtaEstimator:
    """Steps left x seconds per step so far, plus the decode, which costs about `decode_steps` steps.

    The decode's cost in steps is learnt from the last completed job this ingress saw (it depends on the model
    and the hardware, hardly on the size: both grow with the video's volume); until then it counts as none.
    """

    def __init__(self) -> None:
        self.decode_steps = 0.0
        self.seconds_per_gpu_s: float | None = None  # wall seconds a job's run took per estimated GPU-second

    def learn(self, job: Job) -> None:
        denoise, decode = job.metrics.get("denoise"), job.metrics.get("decode")
        if job.status is JobStatus.COMPLETED and denoise and decode and job.total_steps:
            self.decode_steps = decode / (denoise / job.total_steps)
        if job.status is JobStatus.COMPLETED and job.estimated_gpu_s and job.attempts:
            self.seconds_per_gpu_s = (job.completed_at - job.attempts[-1].started_at) / job.estimated_gpu_s

    def estimate(self, job: Job, now: float, place: QueuePlace | None = None) -> int | None:
        """Seconds until `job` ends; None before its first step is timed, or after its last. A queued job's
        (`place`: its place in the queue): the queue up to it run one job at a time, at the last completed job's
        pace (an upper bound where several gangs serve it); None before a job has completed."""
        if place is not None:
            return round(place.gpu_s * self.seconds_per_gpu_s) if self.seconds_per_gpu_s is not None else None
        if job.status is not JobStatus.IN_PROGRESS or job.phase is not Phase.DENOISING or job.current_step < 1:
            return None
        # since the run began: the text encoding is folded into the first steps' pace
        seconds_per_step = (now - job.started_at) / job.current_step
        return round(seconds_per_step * (job.total_steps - job.current_step + self.decode_steps))
