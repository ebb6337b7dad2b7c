"""Logging for the entry points: our progress and results on stderr, third-party notices that say
nothing about the run dropped where they are emitted, everything shown with --verbose."""

from __future__ import annotations

import logging
import os

OUR_LOGGERS = ("skyreels", "serve_app", "deployments")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What each noisy logger says (part of the message) that is dropped unless --verbose.
KNOWN_NOISE = {
    # torchao's optional CUDA kernels (mxfp8, CUTLASS) are not in every build; torchao falls back without them.
    "torchao": ("Failed to load ", "Skipping import of cpp extensions"),
    # without Triton (CPU installs) torchao's int8 matmul uses torch's own kernel
    "torchao.kernel.intmm": ("Detected no triton",),
    # torchao registers its enums as pytree constants, which torch >= 2.13 deprecates; torchao's to change.
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
    # diffusers looks for torchao's legacy tensor classes to load torchao checkpoints; we never load one.
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
    # a local Ray cluster turns token auth on by default and says so on every start.
    "ray._private.authentication.authentication_token_setup": (
        "Token authentication is enabled", "Generated new authentication token"),
}

# Set for this process and the processes it starts (Ray's workers inherit them), unless already set.
QUIET_ENVIRONMENT = {
    # weight loading/writing bars of transformers and huggingface_hub; our own bars show the steps
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # gRPC's "skipping fork() handlers" notices when a Ray worker starts ffmpeg
    "GRPC_VERBOSITY": "ERROR",
}


class DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


_NOISE_FILTERS = {name: DropMessages(fragments) for name, fragments in KNOWN_NOISE.items()}


def configure_logging(verbose: bool = False) -> None:
    """Called once by an entry point, before the heavy imports (the filters must be in place when
    torchao and diffusers are imported). Safe to call again, e.g. with another verbosity."""
    logging.basicConfig(format=FORMAT)
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        for name, noise in _NOISE_FILTERS.items():
            logging.getLogger(name).removeFilter(noise)
    else:
        drop_known_noise()
        for variable, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(variable, value)


def drop_known_noise() -> None:
    """The third-party notices in KNOWN_NOISE are dropped in this process (also Ray's worker setup hook)."""
    for name, noise in _NOISE_FILTERS.items():
        logging.getLogger(name).addFilter(noise)
