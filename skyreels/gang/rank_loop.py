"""What a local gang's rank process runs (after skyreels.gang.process has set up logging), and the messages it
sends its driver (skyreels.gang.local): the rank's side of the queues, apart from the driver so that neither
module imports the other's importer."""

from __future__ import annotations

import logging
import queue
import traceback
from dataclasses import dataclass

import torch.multiprocessing as mp

from skyreels.gang.commands import Command
from skyreels.gang.rank import GangRank, RankSpec

logger = logging.getLogger(__name__)

DEATH_POLL_S = 2.0  # how often a silent gang is checked for dead ranks, and an idle rank for a dead driver


@dataclass(frozen=True)
class Ready:
    rank: int


@dataclass(frozen=True)
class Answered:
    """Rank 0 has sent every item of its answer to the last command."""


@dataclass(frozen=True)
class Failed:
    rank: int
    error: str


def _next_command(commands) -> Command | None:
    """The next command; None to stop, also when the driver is gone (killed: nobody would ever send one)."""
    while True:
        try:
            return commands.get(timeout=DEATH_POLL_S)
        except queue.Empty:
            if not mp.parent_process().is_alive():
                logger.warning("the process driving this gang exited; rank stops")
                return None


def rank_main(spec: RankSpec, rank: int, port: int, commands, answers, stop) -> None:
    gang_rank = None
    try:
        gang_rank = GangRank(spec, rank, cuda_index=rank, stop=stop)
        gang_rank.join("127.0.0.1", port)
        answers.put(Ready(rank))
        while (command := _next_command(commands)) is not None:
            for item in gang_rank.run(command):
                answers.put(item)
            if gang_rank.is_main:
                answers.put(Answered())
    except Exception:  # noqa: BLE001 - report every failure to the driver, which stops the gang
        answers.put(Failed(rank, traceback.format_exc()))
    finally:
        if gang_rank is not None:
            gang_rank.close()
