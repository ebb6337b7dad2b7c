"""What the DiT benchmarks share: the workload of record as CLI flags, the device, and how a report names both."""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import dataclass

import torch

from skyreels import GenerationRequest

PROMPT = "a city at night, neon signs, rain"


def add_workload_flags(parser: argparse.ArgumentParser) -> None:
    """544x960x97, 30 steps, on random-full unless told otherwise."""
    parser.add_argument("--preset", default="random-full", help="random-full (GPU), tiny, or a model source")
    parser.add_argument("--height", type=int, default=544)
    parser.add_argument("--width", type=int, default=960)
    parser.add_argument("--num_frames", type=int, default=97)
    parser.add_argument("--steps", type=int, default=30, help="denoising steps of the video")


@dataclass(frozen=True)
class Workload:
    preset: str
    device: str
    dtype: torch.dtype
    request: GenerationRequest

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Workload:
        return cls.create(args.preset, args.height, args.width, args.num_frames, args.steps)

    @classmethod
    def create(cls, preset: str, height: int, width: int, num_frames: int, steps: int,
               device: str | None = None) -> Workload:
        """On `device` (default: the GPU when there is one, else the CPU): bf16 on a GPU, float32 on the CPU;
        true CFG with the default negative prompt."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        request = GenerationRequest(prompt=PROMPT, height=height, width=width, num_frames=num_frames,
                                    num_inference_steps=steps, seed=0)
        return cls(preset, device, torch.bfloat16 if device == "cuda" else torch.float32, request)

    def describe(self) -> dict:
        return {"preset": self.preset, "height": self.request.height, "width": self.request.width,
                "num_frames": self.request.num_frames, "steps": self.request.num_inference_steps}

    def report_header(self) -> dict:
        """What every report starts with: the command, the device and the versions."""
        return {"command": f"python {' '.join(sys.argv)}", "device": self.device_name(), "versions": versions()}

    def device_name(self) -> str:
        return torch.cuda.get_device_name() if self.device == "cuda" else f"CPU {platform.machine()}"


def versions() -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
