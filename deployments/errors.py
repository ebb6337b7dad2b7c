"""Errors the stage deployments raise to their callers (importable without torch)."""


class GangWorkerDied(RuntimeError):
    """A DiT worker of the replica's gang died; the replica is replaced and the job must fail."""


class GangUnavailable(GangWorkerDied):
    """The gang was already broken when the request arrived: nothing ran, the caller may retry."""
