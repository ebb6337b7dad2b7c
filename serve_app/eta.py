"""An honest wait: a running job's time left, from the pace of its own denoising steps."""

from __future__ import annotations

from serve_app.schemas import Job, JobStatus
from skyreels.progress import Phase


class EtaEstimator:
    """Steps left x seconds per step so far, plus the decode, which costs about `decode_steps` steps.

    The decode's cost in steps is learnt from the last completed job this ingress saw (it depends on the model
    and the hardware, hardly on the size: both grow with the video's volume); until then it counts as none.
    """

    def __init__(self) -> None:
        self.decode_steps = 0.0

    def learn(self, job: Job) -> None:
        denoise, decode = job.metrics.get("denoise"), job.metrics.get("decode")
        if job.status is JobStatus.COMPLETED and denoise and decode and job.total_steps:
            self.decode_steps = decode / (denoise / job.total_steps)

    def estimate(self, job: Job, now: float) -> int | None:
        """Seconds until `job` ends; None before its first step is timed, or after its last."""
        if job.status is not JobStatus.IN_PROGRESS or job.phase is not Phase.DENOISING or job.current_step < 1:
            return None
        # since the run began: the text encoding is folded into the first steps' pace
        seconds_per_step = (now - job.started_at) / job.current_step
        return round(seconds_per_step * (job.total_steps - job.current_step + self.decode_steps))
