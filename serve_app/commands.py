"""`skyreels serve` and `skyreels demo`, added to the library's CLI through the `skyreels.commands`
entry point (pyproject.toml): the CLI finds them without importing serve_app. Ray loads on run only."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skyreels.cli import add_device_flags, add_field_flag, default_dtype, resolve_device
from skyreels.request import GenerationRequest

if TYPE_CHECKING:
    from skyreels.preflight.budget import PreflightReport
    from skyreels.preflight.gpus import GpuType

APP_IMPORT_PATH = "serve_app.app:build_app"


def add_commands(commands: argparse._SubParsersAction) -> None:
    for name, help_text in (("serve", "run the Ray Serve application locally until Ctrl-C"),
                            ("demo", "start the application, generate one video through it, save it, stop")):
        service = commands.add_parser(name, help=help_text, description=help_text.capitalize() + ".")
        service.add_argument("--model", default="tiny", help="T2V model source (tiny serves both tasks)")
        service.add_argument("--i2v_model", help="I2V model source (default: tiny's when --model tiny)")
        add_device_flags(service)
        service.add_argument("--gpus_per_replica", type=int, default=1, help="DiT gang size")
        service.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on")
        service.add_argument("--port", type=int, default=8000, help="port of the HTTP proxy")
        service.add_argument("--data_dir", type=Path, default=Path("skyreels-serve"),
                             help="job database and artifacts")
        service.set_defaults(run=run_service, demo=name == "demo")

    demo = commands.choices["demo"]
    fields = GenerationRequest.model_fields
    # the tiny preset's scale, so that the demo takes seconds on a CPU
    add_field_flag(demo, "prompt", fields["prompt"], required=False, default="a cat walks on the grass, realistic")
    demo.add_argument("--size", default="64x64", help="WIDTHxHEIGHT")
    add_field_flag(demo, "num_frames", fields["num_frames"], default=9)
    add_field_flag(demo, "num_inference_steps", fields["num_inference_steps"], default=4)
    add_field_flag(demo, "seed", fields["seed"], default=42)
    demo.add_argument("--output", type=Path, default=Path("results/demo.mp4"), help="where the video is saved")


def run_service(args: argparse.Namespace) -> int:
    from serve_app.app import AppConfig
    from serve_app.launch import run_demo, start_local

    device = resolve_device(args.device)
    config = AppConfig(
        model=args.model,
        i2v_model=args.i2v_model,
        device=device,
        dtype=args.dtype or default_dtype(device),
        gpus_per_replica=args.gpus_per_replica,
        database_path=str(args.data_dir.resolve() / "jobs.sqlite3"),
        artifact_url=str(args.data_dir.resolve() / "artifacts"),
    )
    url = start_local(config, host=args.host, port=args.port, verbose=args.verbose)
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


def preflight_config(path: Path, gpu: GpuType, request: GenerationRequest) -> PreflightReport:
    """`skyreels preflight --config PATH` (the skyreels.preflight_configs entry point): the first application of
    the Serve config that runs this app, played as serve_app.preflight plays it at the app's startup."""
    import yaml

    from serve_app.app import AppConfig
    from serve_app.preflight import STAGES, app_preflight

    document = yaml.safe_load(Path(path).read_text())
    for application in document.get("applications", []):
        if application.get("import_path") == APP_IMPORT_PATH:
            stages = [deployment for deployment in application.get("deployments", []) if deployment["name"] in STAGES]
            stage_gpus = {stage["name"]: stage.get("ray_actor_options", {}).get("num_gpus", 0) for stage in stages}
            stage_replicas = {stage["name"]: most_replicas(stage) for stage in stages}
            return app_preflight(AppConfig.model_validate(application.get("args") or {}), gpu, request, stage_gpus,
                                 stage_replicas)
    raise ValueError(f"{path}: no application with import_path {APP_IMPORT_PATH}")


def most_replicas(deployment: dict[str, Any]) -> int:
    """The most replicas a Serve config's `deployments:` entry may run (1 when it leaves the count to Serve)."""
    autoscaling = deployment.get("autoscaling_config") or {}
    if "max_replicas" in autoscaling:
        return int(autoscaling["max_replicas"])
    replicas = deployment.get("num_replicas", 1)
    return replicas if isinstance(replicas, int) else 1
