#!/usr/bin/env bash
# Run where pip can reach a package registry: downloads into .whl/ the wheels that a GPU host without
# one lacks (its image has torch, transformers, accelerate, safetensors, numpy, pillow, imageio, tqdm),
# for CPython 3.12 on x86-64. benchmarks/gpu/run.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/../.."

python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    diffusers==0.42.1 torchao==0.18.0 cachetools==8.0.2 importlib-metadata==10.2.0 imageio-ffmpeg==0.8.1 \
    setuptools==84.2.1 \
    pydantic==2.13.4 pydantic-core==2.46.4 pydantic-settings==2.14.1 annotated-types==0.7.0 \
    typing-inspection==0.4.2 typing-extensions==4.16.0 python-dotenv==1.2.2
ls -l .whl
