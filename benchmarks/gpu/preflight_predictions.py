"""The preflight's predictions for the DiT parts of `quick`, made here on the CPU, read by quick's report.

    python benchmarks/gpu/preflight_predictions.py  # writes benchmarks/gpu/preflight_predictions.json

Each DiT part runs one variant of bench_dit (the transformer alone on the GPU, the steps at the GPU settings'
shape); the preflight plays the same stage with the same options on fake CUDA (skyreels.preflight.run, a rank that
neither encodes nor decodes) and predicts `torch.cuda.max_memory_allocated`. The first GPU run puts the measured
peak next to it (quick_report's calibration table); the goal is within 10%. Regional compile is left out of the
played options: it changes which kernels run, not what the steps keep alive.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from bench_dit import variants  # noqa: E402
from quick_report import DIT_PARTS  # noqa: E402
from quick_settings import GPU  # noqa: E402

from skyreels.preflight.gpus import gpu_type  # noqa: E402
from skyreels.preflight.run import ProcessPlan, Role, play  # noqa: E402
from skyreels.request import GenerationRequest  # noqa: E402

PREDICTIONS = Path(__file__).with_name("preflight_predictions.json")
GPU_TYPE = "H100-80GB"


def main() -> None:
    request = GenerationRequest(prompt="a preflight", height=GPU.height, width=GPU.width, num_frames=GPU.num_frames,
                                num_inference_steps=1 + GPU.measure_steps)
    options = variants(GPU.cache_threshold, "cuda")
    predictions = {}
    for part, variant in DIT_PARTS.items():
        if variant == "diffusers":  # diffusers' own forward, not the project's stage: nothing of ours to play
            continue
        optimize, batch_cfg = options[variant]
        memory = play(ProcessPlan(role=Role.GANG_RANK, task=request.task, request=request,
                                  optimize=optimize.model_copy(update={"compile": False}),
                                  sequence_batch=not batch_cfg), gpu_type(GPU_TYPE))
        predictions[part] = {"variant": variant, "gpu_type": GPU_TYPE,
                             "predicted_peak_allocated_gb": round(memory.gpu_allocated / 2**30, 2)}
        print(part, predictions[part], flush=True)
    PREDICTIONS.write_text(json.dumps(predictions, indent=2) + "\n")


if __name__ == "__main__":
    main()
