"""A local DiT gang: N spawned processes (one per GPU, or gloo ranks on CPU) in one group, each a GangRank.

Each process loads its stages once and then runs command after command. `LocalGang.run` sends a command
to the ranks it declares (skyreels.gang.commands) and streams rank 0's answer back; `LocalGangStages`
puts the generation recipe's stages on the gang.
"""

from __future__ import annotations

import logging
import pickle
import queue
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from skyreels.gang.commands import Command, Decode, Denoise, EncodeImage, EncodeText, ranks_for
from skyreels.gang.process import rank_process
from skyreels.gang.rank import RankSpec
from skyreels.gang.rank_loop import DEATH_POLL_S, Answered, Failed, Ready
from skyreels.parallel.group import free_port
from skyreels.progress import StepProgress
from skyreels.recipe import Checkpoint, Denoised
from skyreels.request import GenerationRequest, Task
from skyreels.stages.conditioning import Conditioning, ImageCondition
from skyreels.stages.denoise import DenoiseParams

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600.0


class LocalGang:
    """Drives the gang's processes, one command at a time."""

    def __init__(self, spec: RankSpec) -> None:
        if spec.device == "cuda" and torch.cuda.device_count() < spec.world_size:
            raise ValueError(f"gpu_num {spec.world_size} needs that many GPUs, {torch.cuda.device_count()} visible")
        self.spec = spec
        context = mp.get_context("spawn")
        self._commands = [context.Queue() for _ in range(spec.world_size)]
        self._answers = context.Queue()
        self._stop = context.Event()
        port = free_port()
        verbose = logging.getLogger().isEnabledFor(logging.INFO)  # the ranks log as this process does
        spec_blob = pickle.dumps(spec)
        self._processes = [
            context.Process(target=rank_process, args=(verbose, spec_blob, rank, port, self._commands[rank],
                                                       self._answers, self._stop),
                            daemon=True, name=f"skyreels-rank{rank}")
            for rank in range(spec.world_size)
        ]
        for process in self._processes:
            process.start()
        ready = 0
        while ready < spec.world_size:
            ready += isinstance(self._next_message(STARTUP_TIMEOUT_S), Ready)
        logger.info("local gang of %d ranks ready", spec.world_size)

    def run(self, command: Command) -> Iterator[Any]:
        """Rank 0's answer to `command`, item by item."""
        self._stop.clear()
        for rank in ranks_for(command, self.spec.world_size):
            self._commands[rank].put(command)
        while not isinstance(message := self._next_message(None), Answered):
            yield message

    def stop_steps(self) -> None:
        """The ranks stop denoising together after the step in flight."""
        self._stop.set()

    def close(self) -> None:
        for commands in self._commands:
            commands.put(None)
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()

    def _next_message(self, timeout_s: float | None) -> Any:
        """The next message from the ranks; a dead or failed rank (or `timeout_s` without any message) closes
        the gang. A rank killed from outside shows first as a failed collective on the others: the error
        names the ranks that exited, the cause, before the survivor's traceback."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                message = self._answers.get(timeout=DEATH_POLL_S)
            except queue.Empty:
                if dead := self._exited_ranks():
                    self.close()
                    raise RuntimeError(f"gang ranks exited (name: exit code) {dead}; their stderr has the reason "
                                       "(a script that starts a gang needs an `if __name__ == '__main__':` guard)")
                if deadline is not None and time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"the local gang sent nothing for {timeout_s:.0f} s")
                continue
            if isinstance(message, Failed):
                dead = self._exited_ranks()
                self.close()
                cause = f"gang ranks exited (name: exit code) {dead}, then " if dead else ""
                raise RuntimeError(f"{cause}gang rank {message.rank} failed:\n{message.error}")
            return message

    def _exited_ranks(self) -> dict[str, int | None]:
        return {process.name: process.exitcode for process in self._processes if not process.is_alive()}


class LocalGangStages:
    """The recipe's stages on a local gang: text and image on rank 0, the DiT and the VAE decode on every rank."""

    def __init__(self, gang: LocalGang) -> None:
        self.gang = gang

    async def encode_text(self, prompt: str, negative_prompt: str | None) -> Conditioning:
        return self._one(EncodeText(prompt, negative_prompt))

    async def encode_image(self, request: GenerationRequest) -> ImageCondition:
        return self._one(EncodeImage(request.image, request.height, request.width, request.seed))

    async def denoise(self, task: Task, conditioning: Conditioning, params: DenoiseParams,
                      image: ImageCondition | None, checkpoint: Checkpoint | None = None
                      ) -> AsyncIterator[StepProgress | Denoised]:
        resume = checkpoint.load_steps() if checkpoint is not None else None
        answers = self.gang.run(Denoise(task, conditioning, params, image, resume, checkpoint))
        finished = False
        try:
            for event in answers:
                yield event
            finished = True
        finally:
            if not finished:  # closed early (cancelled): the ranks stop after the step in flight (and checkpoint it)
                self.gang.stop_steps()
                for _ in answers:  # the rest of their answer, so that the next command starts clean
                    pass

    async def decode(self, latents: torch.Tensor, request: GenerationRequest) -> np.ndarray:
        return self._one(Decode(latents))

    def _one(self, command: Command) -> Any:
        (answer,) = self.gang.run(command)
        return answer

