#!/usr/bin/env bash
# The GPU measurements of record. `quick` takes them all in one call of at most 8 minutes on one H100 (the
# parts in the order of their value, each under a time limit; see benchmarks/gpu/quick.py):
#
#   benchmarks/gpu/run.sh quick        the figures below, shortened: DiT variants over a step (diffusers,
#                                      lossless, fp8), memory, step cache on a short run, a short e2e video + sim
#                                      profile, a weight swap (T2V <-> I2V) from pinned host memory
#   benchmarks/gpu/run.sh quick --dry-run   the same code on the tiny preset, CPU, float32, in seconds
#
# The full steps, one per call so that each fits in 10 minutes on one H100:
#
#   benchmarks/gpu/run.sh check        tiny preset on the GPU in bf16: every option vs the unoptimised run,
#                                      and the unoptimised GPU run vs the CPU float32 reference
#   benchmarks/gpu/run.sh dit-base     random-full DiT, 544x960x97: diffusers' default vs lossless (best exact
#                                      kernel installed) vs lossless on SDPA's cuDNN kernel
#   benchmarks/gpu/run.sh dit-fast     random-full DiT: fp8 weight-only, fp8 weights + activations, block offload
#   benchmarks/gpu/run.sh dit-cache    random-full DiT: First-Block step cache over a whole 30-step video
#   benchmarks/gpu/run.sh cache-quality random-full DiT: the step cache at 0.1 vs the exact 30-step video
#                                      (latent PSNR, skipped forwards; no compile)
#   benchmarks/gpu/run.sh e2e          random-full text + DiT + VAE vs diffusers' pipeline (4 steps)
#
# Results go to $OUT (default benchmarks/results) as .json + .md. On a host with no package registry,
# carry the wheels of benchmarks/gpu/fetch_wheels.sh in .whl/: they are installed first.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS="quick check dit-base dit-fast dit-cache cache-quality e2e"
if [[ " $STEPS " != *" ${1:-none} "* ]] || [[ "${2:-}" != "" && "$1 $2" != "quick --dry-run" ]]; then
    sed -n 2,22p "$0"; exit 2
fi
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"

if [ -d .whl ] && [ "${2:-}" != "--dry-run" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD:$PWD/benchmarks:$PWD/benchmarks/gpu${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD:$PWD/benchmarks:$PWD/benchmarks/gpu${PYTHONPATH:+:$PYTHONPATH}"
fi
# the project itself where it is not installed: its metadata (the `skyreels` script, the entry points that add
# `serve` and `demo` to it); no dependency is fetched (setuptools, the build backend, is one of the wheels)
if ! python3 -c "import importlib.metadata as m; m.distribution('skyreels-serve')" 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-index --no-build-isolation --no-compile -e .
fi
export SKYREELS_CACHE_DIR=${SKYREELS_CACHE_DIR:-/tmp/skyreels-cache}
if [ "$1" = quick ]; then
    # 8 minutes from this script's start, the wheels' installation included ($SECONDS so far)
    exec python3 benchmarks/gpu/quick.py --out "$OUT" --budget_s $((${QUICK_BUDGET_S:-480} - SECONDS)) \
        --command "$0 $*" ${2:-}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt" || true
python3 -c "import torch, diffusers, torchao; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'diffusers', diffusers.__version__, 'torchao', torchao.__version__)" | tee -a "$OUT/device.txt"

case "${1:-}" in
    check)
        python3 benchmarks/bench_options.py --dtype bfloat16 --cpu_reference --num_inference_steps 10 \
            --out "$OUT/options_tiny_gpu.json" ;;
    dit-base)
        python3 benchmarks/bench_dit.py --preset random-full --variants diffusers,lossless,cudnn --out "$OUT/dit_base.json" ;;
    dit-fast)
        python3 benchmarks/bench_dit.py --preset random-full --variants fp8,fp8-dynamic,offload --out "$OUT/dit_fast.json" ;;
    dit-cache)
        python3 benchmarks/bench_dit.py --preset random-full --variants cache --out "$OUT/dit_cache.json" ;;
    cache-quality)
        python3 benchmarks/bench_step_cache.py --preset random-full --thresholds 0.1 --out "$OUT/step_cache.json" ;;
    e2e)
        python3 benchmarks/bench_e2e.py --preset random-full --steps 4 --out "$OUT/e2e.json" ;;
esac
