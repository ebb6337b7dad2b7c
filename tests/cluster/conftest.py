"""benchmarks/ on the path: the fake GPU cluster (benchmarks/sim_cluster.py) is shared with bench_cluster.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
