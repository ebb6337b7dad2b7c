"""Every Python process started with this folder first on PYTHONPATH simulates a CUDA build (see cuda_sim.py)."""

import cuda_sim

cuda_sim.install()
