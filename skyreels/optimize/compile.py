"""Regional torch.compile: the repeated DiT blocks compile once per block type, not the whole model."""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)


def compile_blocks(transformer: nn.Module) -> None:
    """Not fullgraph: the step cache decides per step in Python, and prompts of unequal length in one batch
    attend one by one (see skyreels.parallel.joint_attention); both run eagerly between compiled pieces.

    The inductor cache and dynamo's recompile limit are process settings: `skyreels.runtime` sets them.
    """
    # dynamic=None: the first graph is static; a prompt of another length then makes the text length symbolic
    # (one more compile), instead of one graph per prompt length, which would soon hit dynamo's recompile limit
    transformer.compile_repeated_blocks(fullgraph=False, dynamic=None)
    logger.info("the repeated transformer blocks compile on first use")
