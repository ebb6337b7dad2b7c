"""CFG parallel: each half of the mesh runs one guidance branch; one all-gather joins them."""

from __future__ import annotations

import torch

from skyreels.parallel.mesh import DeviceMesh
from skyreels.parallel.collectives import all_gather_cat


def gather_branches(prediction: torch.Tensor, mesh: DeviceMesh) -> tuple[torch.Tensor, ...]:
    """This rank's branch prediction -> every branch's, in cfg-rank order (positive first)."""
    return all_gather_cat(prediction, dim=0, group=mesh.cfg_group).chunk(mesh.cfg_degree)
