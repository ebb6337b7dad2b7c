"""The planner's tables behind the shipped configs: 8 H100s at two rates, 8 L4s, and 8 H100s with L4s for the text
and VAE stages (the model's predictions; benchmarks/results/planner_validation.md checks the model).

    python benchmarks/plan_tables.py        # about a minute; writes benchmarks/results/plan_tables.md
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from skyreels.planner.plan import Fleet, Traffic, markdown, plan

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scenario:
    title: str
    fleet: Fleet
    traffic: Traffic
    config: str  # the cluster/ file it is behind

    def command(self) -> str:
        pool = ",".join(f"{kind}:{n}" for kind, n in self.fleet.pool.items())
        target = f" --p95 {self.traffic.p95_target_s:g}" if self.traffic.p95_target_s else ""
        return (f"skyreels plan --gpus {self.fleet.gpus} --gpu_type {self.fleet.gpu_type} "
                f"--rate {self.traffic.rate_per_hour:g}{target}" + (f" --pool {pool}" if pool else ""))


SCENARIOS = [
    Scenario("8 H100s at 30 videos/h, p95 within 10 minutes", Fleet(8, "H100-80GB"),
             Traffic(30, p95_target_s=600), "serve_config.gpu8.yaml"),
    Scenario("8 H100s near their capacity: 65 videos/h, p95 within 5 minutes", Fleet(8, "H100-80GB"),
             Traffic(65, p95_target_s=300), "serve_config.gpu8.yaml"),
    Scenario("8 L4s at 6 videos/h", Fleet(8, "L4-24GB"), Traffic(6), "serve_config.l4x8.yaml"),
    Scenario("8 H100s and 8 L4s for text and VAE at 70 videos/h, p95 within 400 s",
             Fleet(8, "H100-80GB", {"L4-24GB": 8}), Traffic(70, p95_target_s=400), "serve_config.hetero.yaml"),
]


def main() -> None:
    lines = ["# The planner's layout tables", "",
             f"`python {' '.join(sys.argv)}`: each table is `skyreels plan`'s (the model's predictions at 544x960x97, "
             "30 steps, T2V; the GPU types scaled from SkyReelsInfer's A800 figures by their datasheets; prices "
             "from skyreels/planner/hardware.py), best first.", ""]
    for scenario in SCENARIOS:
        predictions = plan(scenario.fleet, scenario.traffic)
        best = predictions[0]
        lines += [f"## {scenario.title}", "", f"`{scenario.command()}` (behind cluster/{scenario.config})", "",
                  markdown(predictions, scenario.traffic),
                  f"Best: **{best.layout.name}** ({best.layout.shape()}, {best.layout.precision})"
                  f"{'' if best.meets_target else ': none meets the target'}.", ""]
    out = ROOT / "benchmarks" / "results" / "plan_tables.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
