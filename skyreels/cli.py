"""`skyreels` console script: generate (the flags of SkyReels' video_generate.py), make-tiny, and the
commands that installed packages add through the `skyreels.commands` entry points (serve, demo)."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import closing
from enum import Enum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from skyreels.logs import configure_logging
from skyreels.lora.spec import MAX_LORAS, MAX_SCALE, MIN_SCALE, LoraSpec
from skyreels.models import ModelNotAvailableError
from skyreels.planner.cli import add_plan_command
from skyreels.preflight.gpus import GPU_TYPES
from skyreels.optimize.config import OptimizeConfig, QuantMode
from skyreels.request import GenerationRequest, Task
from skyreels.validation import describe_validation_error

logger = logging.getLogger("skyreels.cli")  # also under `python -m skyreels.cli`

# Each entry point names a callable that takes the subparsers and adds its commands; a command sets
# `run` (args -> exit code) as a parser default.
COMMANDS_GROUP = "skyreels.commands"
PREFLIGHT_CONFIGS_GROUP = "skyreels.preflight_configs"  # (path, GpuType, GenerationRequest) -> PreflightReport
DTYPES = ("bfloat16", "float16", "float32")
VERBOSE_HELP = "show our debug logs and every third-party message (default: off)"
REQUEST_FLAGS = (
    "prompt", "negative_prompt", "height", "width", "num_frames", "num_inference_steps",
    "guidance_scale", "embedded_guidance_scale", "seed", "fps",
)
# Where the CLI keeps video_generate.py's behaviour instead of the library's.
CLI_OVERRIDES = {
    "seed": {"default": 42, "help": f"{GenerationRequest.model_fields['seed'].description} "
                                    "The CLI's default is video_generate.py's 42, not a random seed."},
}
# --flag -> OptimizeConfig field, under video_generate.py's flag names where it had the option.
OPTIMIZE_FLAGS = {
    "offload": "offload",
    "parameters_level": "block_offload",
    "high_cpu_memory": "high_cpu_memory",
    "compiler_transformer": "compile",
    "compile_cache_dir": "compile_cache_dir",
    "attention_backend": "attention_backend",
    "step_cache_threshold": "step_cache_threshold",
}
# How a refused field is named back to the user: the flag they typed.
FLAG_NAMES = {
    **{name: f"--{name}" for name in REQUEST_FLAGS},
    "task": "--task_type",
    "image": "--image",
    "loras": "--lora",
    **{field: f"--{flag}" for flag, field in OPTIMIZE_FLAGS.items()},
    "quant": "--quant_mode",
}


class DefaultsShown(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if not action.option_strings or action.required or action.default is argparse.SUPPRESS \
                or "default:" in help_text:
            return help_text
        shown = {None: "none", False: "off"}.get(action.default, action.default)
        return f"{help_text} (default: {str(shown).replace('%', '%%')})"


def _command_parser(**kwargs: Any) -> argparse.ArgumentParser:
    """Every subcommand, ours or a plugin's, shows its defaults and takes -v after its name too."""
    kwargs.setdefault("formatter_class", DefaultsShown)
    parser = argparse.ArgumentParser(**kwargs)
    # SUPPRESS: when not given here, the top-level -v still counts
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def add_field_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, field: FieldInfo,
                   aliases: tuple[str, ...] = (), **overrides: Any) -> None:
    """--flag with the field's type, default and description; overrides say what the CLI does differently."""
    options: dict[str, Any] = {"default": field.default, "help": (field.description or "").replace("%", "%%")}
    annotation = field.annotation
    if annotation is bool:
        options["action"] = "store_true"
    elif get_origin(annotation) is Literal:
        options["choices"] = get_args(annotation)
    elif isinstance(annotation, type) and issubclass(annotation, Enum):
        options["choices"] = [member.value for member in annotation]
        options["default"] = field.default.value
    else:
        options["type"] = next(t for t in get_args(annotation) or (annotation,) if t is not type(None))
    if field.is_required():
        options.pop("default")
        options["required"] = True
    options.update(overrides)
    parser.add_argument(f"--{flag}", *(f"--{alias}" for alias in aliases), dest=flag, **options)


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N; auto: cuda when a GPU is visible")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 on a GPU, float32 on CPU")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    return "float32" if device == "cpu" else "bfloat16"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyreels", description=__doc__, formatter_class=DefaultsShown)
    parser.add_argument("-v", "--verbose", action="store_true", default=False, help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_command_parser)
    _add_generate(commands)
    _add_preflight(commands)
    add_plan_command(commands)
    make_tiny = commands.add_parser("make-tiny", help="write the tiny preset (the real weights' on-disk layout)")
    make_tiny.add_argument("path", type=Path, help="directory to write")
    make_tiny.add_argument("--task", default="t2v", choices=[t.value for t in Task], help="which model to write")
    make_tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    make_tiny.set_defaults(run=run_make_tiny)
    for entry_point in entry_points(group=COMMANDS_GROUP):
        entry_point.load()(commands)
    return parser


def _add_generate(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser("generate", help="generate videos in this process",
                                   description="Generate videos in this process (video_generate.py's flags).")
    add_generation_flags(generate)
    generate.add_argument("--video_num", type=int, default=1, help="videos from consecutive seeds")
    generate.add_argument("--outdir", default="skyreels", help="videos go to results/OUTDIR/")
    add_device_flags(generate)
    generate.set_defaults(run=run_generate)


def add_generation_flags(generate: argparse.ArgumentParser, overrides: dict[str, dict] | None = None) -> None:
    """What a video is and how it runs: the request, the model, the GPUs and the speed and memory options.
    `overrides`: argparse options of request flags, by flag, over the CLI's own (CLI_OVERRIDES)."""
    request_fields = GenerationRequest.model_fields
    generate.add_argument("--model_id", default="tiny", help="'tiny', a local directory or a Hub id")
    add_field_flag(generate, "task_type", request_fields["task"], aliases=("task",))
    add_field_flag(generate, "image", request_fields["image"], type=str,
                   help=f"{request_fields['image'].description} An image file.")
    for name in REQUEST_FLAGS:
        add_field_flag(generate, name, request_fields[name],
                       **CLI_OVERRIDES.get(name, {}) | (overrides or {}).get(name, {}))
    generate.add_argument("--lora", action="append", type=_lora, metavar="SOURCE[:SCALE]",
                          help="a LoRA adapter of the DiT: a .safetensors file, a directory holding one, an fsspec "
                               "URL (s3://, gs://, https://, ...) or a Hub id (owner/name), with its strength SCALE "
                               f"(1.0 when left out, {MIN_SCALE:g} to {MAX_SCALE:g}); repeat for several (up to "
                               f"{MAX_LORAS})")
    generate.add_argument("--gpu_num", type=int, default=1, help="processes in one group, one GPU each")
    generate.add_argument("--sequence_batch", action="store_true",
                          help="run the CFG branches one after the other (less memory)")

    speed = generate.add_argument_group("speed and memory")
    optimize_fields = OptimizeConfig.model_fields
    speed.add_argument("--quant", action="store_true", help="quantise the DiT and LLaMA linears (see --quant_mode)")
    add_field_flag(speed, "quant_mode", optimize_fields["quant"], default="auto",
                   choices=[mode for mode in get_args(QuantMode) if mode != "none"])
    for flag, field in OPTIMIZE_FLAGS.items():
        add_field_flag(speed, flag, optimize_fields[field])


def request_from_flags(args: argparse.Namespace, default_image: Any = None) -> GenerationRequest:
    return GenerationRequest(
        task=Task(args.task_type),
        image=_load_image(args.image) if args.image else default_image,
        loras=args.lora or [],
        **{name: getattr(args, name) for name in REQUEST_FLAGS},
    )


def optimize_from_flags(args: argparse.Namespace) -> OptimizeConfig:
    return OptimizeConfig(
        quant=args.quant_mode if args.quant else "none",
        **{field: getattr(args, flag) for flag, field in OPTIMIZE_FLAGS.items()},
    )


def _add_preflight(commands: argparse._SubParsersAction) -> None:
    preflight = commands.add_parser(
        "preflight", help="find GPU faults and count GPU and host memory on fake CUDA, before renting GPUs",
        description="Runs the real code of `skyreels generate` (or of a Serve config) on fake CUDA at full size, "
                    "with no weights allocated: any error CUDA would raise, the peak memory of each GPU and of the "
                    "host, and whether it fits. --model_id picks nothing here: the SkyReels-V1 architecture of "
                    "--task_type is played. Exit status 0: fits; 1: does not fit, or a fault.")
    # the prompt's words change nothing the preflight counts (every prompt is played as 256 tokens)
    add_generation_flags(preflight, overrides={"prompt": {"required": False, "default": "a preflight"}})
    preflight.add_argument("--gpu_type", default="H100-80GB", choices=list(GPU_TYPES), help="the GPUs to plan for")
    preflight.add_argument("--config", type=Path, metavar="SERVE_CONFIG.yaml",
                           help="a Serve config: what each GPU of its layout holds (its stages, co-located "
                                "replicas and the gang's ranks), for a request of the flags' shape")
    preflight.set_defaults(run=run_preflight)


def run_preflight(args: argparse.Namespace) -> int:
    from skyreels.preflight.generate import preflight_generate
    from skyreels.preflight.gpus import gpu_type
    from skyreels.preflight.run import PreflightFault

    from PIL import Image

    gpu = gpu_type(args.gpu_type)
    # I2V without --image: a blank first frame of the video's size (its pixels change nothing counted)
    blank = Image.new("RGB", (args.width, args.height)) if args.task_type == Task.I2V.value else None
    request = request_from_flags(args, default_image=blank)
    try:
        if args.config is not None:
            report = _config_preflight()(args.config, gpu, request)
        else:
            report = preflight_generate(request, gpu, optimize_from_flags(args), args.gpu_num, args.sequence_batch)
    except PreflightFault as fault:
        print(f"skyreels preflight: a GPU run would fail: {fault}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    print(report.verdict())
    return 0 if report.fits else 1


def _config_preflight() -> Any:
    """The preflight of a Serve config, which the package that knows Serve configs provides (serve_app)."""
    found = entry_points(group=PREFLIGHT_CONFIGS_GROUP)
    if not found:
        raise UsageError("--config needs the Serve application's package (serve_app) installed")
    return next(iter(found)).load()


def run_generate(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from skyreels.pipeline import LocalPipeline

    if args.video_num < 1:
        raise UsageError("--video_num must be at least 1")
    request = request_from_flags(args)
    optimize = optimize_from_flags(args)
    pipe = LocalPipeline.from_pretrained(
        args.model_id,
        task=request.task,
        device=resolve_device(args.device),
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        gpu_num=args.gpu_num,
        sequence_batch=args.sequence_batch,
        optimize=optimize,
    )
    out_dir = Path("results") / args.outdir
    out_dir.mkdir(parents=True, exist_ok=True)
    # log lines go above the bar instead of onto its line
    with logging_redirect_tqdm(), closing(pipe), \
            tqdm(total=args.video_num * request.num_inference_steps, unit="step", desc="denoising") as bar:
        for index, result in enumerate(
            pipe.generate_videos(request, args.video_num, on_step=lambda _: bar.update())
        ):
            # the original's naming: first 100 characters of the prompt, seed, index
            path = out_dir / f"{args.prompt[:100].replace('/', '')}_{result.seed}_{index}.mp4"
            path.write_bytes(result.to_mp4())
            bar.write(f"generate video, local path: {path}")
            logger.info("stage timings (s): %s", {k: round(v, 3) for k, v in result.timings.items()})
    return 0


def run_make_tiny(args: argparse.Namespace) -> int:
    from skyreels.tiny import make_tiny_model

    print(make_tiny_model(args.path, task=args.task, seed=args.seed))
    return 0


class UsageError(Exception):
    pass


def _lora(text: str) -> LoraSpec:
    try:
        return LoraSpec.parse(text)
    except ValidationError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {describe_validation_error(error)}") from error


def _load_image(path: str) -> Any:
    from PIL import Image

    try:
        return Image.open(path).convert("RGB")
    except OSError as error:
        raise UsageError(f"--image {path}: cannot read an image ({error})") from error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    try:
        return args.run(args)
    except ValidationError as error:
        print(f"skyreels: invalid request: {describe_validation_error(error, rename=FLAG_NAMES)}", file=sys.stderr)
    except (UsageError, ModelNotAvailableError, ValueError) as error:
        print(f"skyreels: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
