"""The entry point of a local gang's rank process, light on purpose.

A spawned process unpickles its target and arguments before running anything, so a target in a module that
imports torch and diffusers would print their import notices before logging is configured. This module
imports only skyreels.logs; the rank's spec travels pickled as bytes and is read after logging is set up.
"""

from __future__ import annotations

import pickle
from typing import Any

from skyreels.logs import configure_logging


def rank_process(verbose: bool, spec_blob: bytes, rank: int, port: int, commands: Any, answers: Any,
                 stop: Any) -> None:
    configure_logging(verbose)
    from skyreels.gang.rank_loop import rank_main  # the heavy imports, now under our logging

    rank_main(pickle.loads(spec_blob), rank, port, commands, answers, stop)
