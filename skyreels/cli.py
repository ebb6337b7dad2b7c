"""`skyreels` console script: generate (the flags of SkyReels' video_generate.py) and make-tiny."""

from __future__ import annotations

import argparse
from contextlib import closing
import logging
import sys
import time
from typing import get_args
from pathlib import Path

import torch
from PIL import Image
from pydantic import ValidationError
from tqdm import tqdm

from skyreels.models import ModelNotAvailableError
from skyreels.optimize.config import AttentionBackend, OptimizeConfig, QuantMode
from skyreels.request import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, Task

logger = logging.getLogger("skyreels")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyreels", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate videos in this process")
    generate.add_argument("--model_id", default="tiny", help="'tiny', a local directory or a Hub id")
    generate.add_argument("--task_type", "--task", dest="task_type", default="t2v", choices=[t.value for t in Task])
    generate.add_argument("--image", help="first frame for i2v: an image file")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--negative_prompt", default=DEFAULT_NEGATIVE_PROMPT)
    generate.add_argument("--height", type=int, default=544)
    generate.add_argument("--width", type=int, default=960)
    generate.add_argument("--num_frames", type=int, default=97)
    generate.add_argument("--num_inference_steps", type=int, default=30)
    generate.add_argument("--guidance_scale", type=float, default=6.0, help="true CFG scale (1 = off)")
    generate.add_argument("--embedded_guidance_scale", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=42, help="-1 picks a random seed")
    generate.add_argument("--fps", type=int, default=24)
    generate.add_argument("--video_num", type=int, default=1, help="videos from consecutive seeds")
    generate.add_argument("--outdir", default="skyreels", help="videos go to results/OUTDIR/")
    generate.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    generate.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on GPU, float32 on CPU")
    generate.add_argument("--gpu_num", type=int, default=1)
    generate.add_argument(
        "--sequence_batch", action="store_true", help="run the CFG branches one after the other (less memory)"
    )
    speed = generate.add_argument_group("speed and memory")
    speed.add_argument("--quant", action="store_true", help="quantise the DiT and LLaMA linears (see --quant_mode)")
    speed.add_argument("--quant_mode", choices=[m for m in get_args(QuantMode) if m != "none"], default="auto",
                       help="with --quant: weight-only auto|fp8|int8, or fp8-dynamic (fp8 matmuls, Ada/Hopper)")
    speed.add_argument("--offload", action="store_true", help="each model on the GPU only while its stage runs")
    speed.add_argument("--parameters_level", action="store_true",
                       help="stream DiT blocks from host memory with prefetch (lowest GPU memory)")
    speed.add_argument("--high_cpu_memory", action="store_true", help="keep pinned host copies resident")
    speed.add_argument("--compiler_transformer", action="store_true", help="torch.compile the DiT blocks")
    speed.add_argument("--compile_cache_dir", type=Path, help="inductor cache directory")
    speed.add_argument("--attention_backend", default="native", choices=get_args(AttentionBackend))
    speed.add_argument("--step_cache_threshold", type=float,
                       help="First-Block cache threshold (e.g. 0.05): faster, slightly different video")
    generate.set_defaults(run=run_generate)

    for name, help_text in (("serve", "run the Ray Serve application locally until Ctrl-C"),
                            ("demo", "start the application, generate one video through it, save it, stop")):
        service = commands.add_parser(name, help=help_text)
        service.add_argument("--model", default="tiny", help="T2V model source (tiny serves both tasks)")
        service.add_argument("--i2v_model", help="I2V model source (default: tiny's when --model tiny)")
        service.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        service.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on GPU, float32 on CPU")
        service.add_argument("--gpus_per_replica", type=int, default=1, help="DiT gang size")
        service.add_argument("--host", default="127.0.0.1")
        service.add_argument("--port", type=int, default=8000)
        service.add_argument("--data_dir", type=Path, default=Path("skyreels-serve"),
                             help="job database and artifacts")
        service.set_defaults(run=run_service, demo=name == "demo")
    demo = commands.choices["demo"]
    demo.add_argument("--prompt", default="a cat walks on the grass, realistic")
    demo.add_argument("--size", default="64x64", help="WIDTHxHEIGHT")
    demo.add_argument("--num_frames", type=int, default=9)
    demo.add_argument("--num_inference_steps", type=int, default=4)
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--output", type=Path, default=Path("results/demo.mp4"))

    make_tiny = commands.add_parser("make-tiny", help="write the tiny preset (real on-disk layout)")
    make_tiny.add_argument("path", type=Path)
    make_tiny.add_argument("--task", default="t2v", choices=[t.value for t in Task])
    make_tiny.add_argument("--seed", type=int, default=0)
    make_tiny.set_defaults(run=run_make_tiny)
    return parser


def run_generate(args: argparse.Namespace) -> int:
    from skyreels.pipeline import LocalPipeline

    if args.video_num < 1:
        raise UsageError("--video_num must be at least 1")
    request = GenerationRequest(
        task=Task(args.task_type),
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        embedded_guidance_scale=args.embedded_guidance_scale,
        seed=args.seed,
        fps=args.fps,
        image=_load_image(args.image) if args.image else None,
    )
    pipe = LocalPipeline.from_pretrained(
        args.model_id,
        task=request.task,
        device=args.device,
        dtype=DTYPES[args.dtype] if args.dtype else None,
        gpu_num=args.gpu_num,
        sequence_batch=args.sequence_batch,
        optimize=OptimizeConfig(
            quant=args.quant_mode if args.quant else "none",
            offload=args.offload,
            block_offload=args.parameters_level,
            high_cpu_memory=args.high_cpu_memory,
            compile=args.compiler_transformer,
            compile_cache_dir=args.compile_cache_dir,
            attention_backend=args.attention_backend,
            step_cache_threshold=args.step_cache_threshold,
        ),
    )
    out_dir = Path("results") / args.outdir
    out_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(total=args.video_num * request.num_inference_steps, unit="step", desc="denoising") as bar, \
            closing(pipe):
        for index, result in enumerate(
            pipe.generate_videos(request, args.video_num, on_step=lambda _: bar.update())
        ):
            # the original's naming: first 100 characters of the prompt, seed, index
            path = out_dir / f"{args.prompt[:100].replace('/', '')}_{result.seed}_{index}.mp4"
            path.write_bytes(result.to_mp4())
            bar.write(f"generate video, local path: {path}")
            logger.info("stage timings (s): %s", {k: round(v, 3) for k, v in result.timings.items()})
    return 0


def run_service(args: argparse.Namespace) -> int:
    from serve_app.app import AppConfig
    from serve_app.launch import run_demo, start_local

    config = AppConfig(
        model=args.model,
        i2v_model=args.i2v_model,
        device=args.device,
        dtype=args.dtype or ("bfloat16" if args.device == "cuda" else "float32"),
        gpus_per_replica=args.gpus_per_replica,
        database_path=str(args.data_dir.resolve() / "jobs.sqlite3"),
        artifact_url=str(args.data_dir.resolve() / "artifacts"),
    )
    url = start_local(config, host=args.host, port=args.port)
    if args.demo:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        path = run_demo(url, args.prompt, args.output, size=args.size, num_frames=args.num_frames,
                        num_inference_steps=args.num_inference_steps, seed=args.seed)
        print(f"video written to {path} (served by {url})")
        return 0
    print(f"SkyReels-V1 is serving at {url}/ (web page) and {url}/v1/videos (API); Ctrl-C stops it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def run_make_tiny(args: argparse.Namespace) -> int:
    from skyreels.tiny import make_tiny_model

    print(make_tiny_model(args.path, task=args.task, seed=args.seed))
    return 0


class UsageError(Exception):
    pass


def _load_image(path: str) -> Image.Image:
    try:
        return Image.open(path).convert("RGB")
    except OSError as error:
        raise UsageError(f"--image {path}: cannot read an image ({error})") from error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except ValidationError as error:
        messages = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in error.errors())
        print(f"skyreels: invalid request: {messages}", file=sys.stderr)
    except (UsageError, ModelNotAvailableError, ValueError) as error:
        print(f"skyreels: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
