from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from skyreels.cli import OPTIMIZE_FLAGS, REQUEST_FLAGS, build_parser, main
from skyreels.logs import QUIET_ENVIRONMENT, configure_logging
from skyreels.lora import LoraSpec
from skyreels.request import GenerationRequest
from skyreels.tiny import make_tiny_lora
from tests_support import assert_same_video

SMALL = ["--height", "64", "--width", "64", "--num_frames", "9", "--num_inference_steps", "2"]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKYREELS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_generate_writes_playable_videos_named_like_the_original(in_tmp: Path) -> None:
    code = main(["generate", "--model_id", "tiny", "--prompt", "a/cat walks", "--seed", "5", "--video_num", "2",
                 *SMALL])
    assert code == 0
    videos = sorted((in_tmp / "results" / "skyreels").glob("*.mp4"))
    assert [v.name for v in videos] == ["acat walks_5_0.mp4", "acat walks_6_1.mp4"]
    for video in videos:
        assert iio.imread(video, plugin="FFMPEG").shape == (9, 64, 64, 3)


def test_i2v_from_an_image_file(in_tmp: Path) -> None:
    Image.new("RGB", (80, 60), (200, 30, 30)).save(in_tmp / "first.png")
    code = main(["generate", "--task_type", "i2v", "--image", str(in_tmp / "first.png"), "--prompt", "red",
                 "--outdir", "i2v", *SMALL])
    assert code == 0
    assert len(list((in_tmp / "results" / "i2v").glob("red_42_0.mp4"))) == 1


def test_invalid_request_exits_2_with_the_rule(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "--prompt", "x", "--num_frames", "10"]) == 2
    err = capsys.readouterr().err
    assert "--num_frames: num_frames must be 4k+1" in err
    assert "Value error" not in err


def test_refusals_name_the_flag_typed(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "--prompt", "x", "--task_type", "i2v", "--step_cache_threshold", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "skyreels: invalid request: request: task i2v requires an image (the first frame to animate)")
    assert main(["generate", "--prompt", "x", "--step_cache_threshold", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skyreels: invalid request: --step_cache_threshold: Input should be less than or equal to 1")


def _option_help(command: list[str], capsys: pytest.CaptureFixture) -> dict[str, str]:
    """--flag -> its help text, one line, from `skyreels ... --help`."""
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    blocks = re.split(r"\n  (?=-)", capsys.readouterr().out.split("options:", 1)[1])
    return {re.search(r"--\w+", b).group(): " ".join(b.split()) for b in blocks if b.startswith("-")}


def test_generate_help_gives_every_flag_its_help_and_default(capsys: pytest.CaptureFixture) -> None:
    helps = _option_help(["generate"], capsys)
    fields = GenerationRequest.model_fields
    for name in REQUEST_FLAGS:
        text = helps[f"--{name}"]
        assert fields[name].description in text
        if name == "prompt":
            assert "default" not in text  # required
        elif name == "seed":
            assert text.endswith("(default: 42)") and "video_generate.py" in text
        else:
            assert f"(default: {' '.join(str(fields[name].default).split())})" in text
    for flag in [*OPTIMIZE_FLAGS, "quant", "quant_mode", "model_id", "task_type", "image", "video_num", "outdir",
                 "device", "dtype", "gpu_num", "sequence_batch", "verbose"]:
        assert re.search(r"\S.*default: ", helps[f"--{flag}"]), helps[f"--{flag}"]
    assert "(default: auto)" in helps["--quant_mode"]
    assert "(default: off)" in helps["--parameters_level"]


def test_help_lists_the_commands_of_installed_plugins_without_heavy_imports() -> None:
    """serve and demo come from serve_app's `skyreels.commands` entry point; --help stays fast."""
    completed = subprocess.run(
        [sys.executable, "-c", "import sys; from skyreels.cli import main\n"
         "try: main(['--help'])\n"
         "except SystemExit: print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'ray'}))"],
        capture_output=True, text=True, check=True,
    )
    assert re.search(r"^\s+serve\s+run the Ray Serve application", completed.stdout, re.MULTILINE)
    assert re.search(r"^\s+demo\s+start the application", completed.stdout, re.MULTILINE)
    assert completed.stdout.strip().endswith("[]")


@pytest.mark.parametrize("with_lora", [False, True], ids=["plain", "lora"])
def test_generate_prints_only_our_lines(in_tmp: Path, with_lora: bool) -> None:
    """No third-party warning or progress bar: stderr holds our log lines and our denoising bar (also with PEFT's
    LoRA layers)."""
    environment = {k: v for k, v in os.environ.items() if k not in QUIET_ENVIRONMENT}
    lora = ["--lora", f"{make_tiny_lora(in_tmp / 'lora')}:0.5"] if with_lora else []
    completed = subprocess.run(
        [sys.executable, "-m", "skyreels.cli", "generate", "--prompt", "quiet", *lora, *SMALL],
        capture_output=True, text=True, env=environment, check=True,
    )
    lines = [line.strip() for line in re.split(r"[\r\n]+", completed.stderr) if line.strip()]
    assert lines
    assert not [line for line in lines if "warn" in line.lower()]
    for line in lines:
        assert re.match(r"\d{4}-\d\d-\d\d [\d:,]+ INFO skyreels[.\w]*: ", line) or line.startswith("denoising:"), line
    assert len([line for line in lines if "stage timings" in line]) == 1


def test_verbose_lets_our_debug_logs_through(in_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["generate", "--prompt", "quiet", *SMALL]) == 0
    assert not [r for r in caplog.records if r.name.startswith("skyreels") and r.levelno == logging.DEBUG]
    caplog.clear()
    assert main(["generate", "-v", "--prompt", "loud", *SMALL]) == 0
    assert [r for r in caplog.records if r.name.startswith("skyreels") and r.levelno == logging.DEBUG]


def test_known_third_party_noise_dropped_unless_verbose(caplog: pytest.LogCaptureFixture) -> None:
    torchao = logging.getLogger("torchao")
    configure_logging(verbose=False)
    torchao.warning("Failed to load _C_mxfp8.so: Could not load this library")
    torchao.warning("a torchao warning we do not know")
    assert [r.getMessage() for r in caplog.records] == ["a torchao warning we do not know"]
    caplog.clear()
    configure_logging(verbose=True)
    torchao.warning("Failed to load _C_mxfp8.so: Could not load this library")
    assert [r.getMessage() for r in caplog.records] == ["Failed to load _C_mxfp8.so: Could not load this library"]
    configure_logging(verbose=False)


@pytest.mark.parametrize("flags", [["--quant"], ["--quant", "--quant_mode", "fp8"], ["--offload"],
                                   ["--parameters_level", "--high_cpu_memory"], ["--attention_backend", "sage"],
                                   ["--step_cache_threshold", "0.05"]])
def test_speed_flags_generate_a_video(in_tmp: Path, flags: list[str]) -> None:
    assert main(["generate", "--prompt", "fast", *flags, *SMALL]) == 0
    (video,) = (in_tmp / "results" / "skyreels").glob("fast_42_0.mp4")
    assert iio.imread(video, plugin="FFMPEG").shape == (9, 64, 64, 3)


def test_fp8_dynamic_refused_on_cpu(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "--prompt", "x", "--quant", "--quant_mode", "fp8-dynamic", *SMALL]) == 2
    assert "fp8-dynamic needs a GPU with fp8 tensor cores" in capsys.readouterr().err


def test_unsupported_gpu_count_refused(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "--prompt", "x", "--gpu_num", "5", *SMALL]) == 2
    assert "gpu_num must be one of (1, 2, 3, 4, 6, 8), got 5" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_on_a_local_gang_equals_one_process(in_tmp: Path) -> None:
    assert main(["generate", "--prompt", "gang", "--outdir", "one", *SMALL]) == 0
    assert main(["generate", "--prompt", "gang", "--outdir", "two", "--gpu_num", "2", *SMALL]) == 0
    one = iio.imread(in_tmp / "results" / "one" / "gang_42_0.mp4", plugin="FFMPEG")
    two = iio.imread(in_tmp / "results" / "two" / "gang_42_0.mp4", plugin="FFMPEG")
    assert one.shape == two.shape == (9, 64, 64, 3)
    assert_same_video(two, one)


def test_unreadable_image(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    (in_tmp / "not-an-image.png").write_text("hello")
    assert main(["generate", "--task", "i2v", "--image", "not-an-image.png", "--prompt", "x", *SMALL]) == 2
    assert "cannot read an image" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_runs_as_module(in_tmp: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "skyreels", "make-tiny", str(in_tmp / "m"), "--task", "i2v"],
        capture_output=True, text=True, check=True,
    )
    assert completed.stdout.strip() == str(in_tmp / "m")
    assert (in_tmp / "m" / "transformer" / "config.json").is_file()


def test_lora_flags_parse_source_and_scale() -> None:
    args = build_parser().parse_args(["generate", "--prompt", "x", "--lora", "style.safetensors", "--lora",
                                      "s3://bucket/x.safetensors:0.7", "--lora", "https://host/y.safetensors"])
    assert args.lora == [LoraSpec(source="style.safetensors"), LoraSpec(source="s3://bucket/x.safetensors", scale=0.7),
                         LoraSpec(source="https://host/y.safetensors")]
    assert build_parser().parse_args(["generate", "--prompt", "x"]).lora is None


def test_generate_with_a_lora(in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    lora = make_tiny_lora(in_tmp / "style")
    assert main(["generate", "--prompt", "styled", "--outdir", "lora", "--lora", f"{lora.parent}:0.8", *SMALL]) == 0
    assert main(["generate", "--prompt", "styled", "--outdir", "plain", *SMALL]) == 0
    styled = iio.imread(in_tmp / "results" / "lora" / "styled_42_0.mp4", plugin="FFMPEG")
    plain = iio.imread(in_tmp / "results" / "plain" / "styled_42_0.mp4", plugin="FFMPEG")
    assert styled.shape == plain.shape == (9, 64, 64, 3)
    assert np.abs(styled.astype(int) - plain.astype(int)).max() > 10
    assert main(["generate", "--prompt", "x", "--lora", str(in_tmp / "missing.safetensors"), *SMALL]) == 2
    assert f"skyreels: LoRA {str(in_tmp / 'missing.safetensors')!r} not found" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--lora", str(lora), "--parameters_level", *SMALL]) == 2
    assert "skyreels: LoRA adapters cannot run with block offload (--parameters_level)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--prompt", "x", "--lora", "a:9"])
    assert exit_.value.code == 2
    assert "argument --lora: 'a:9': scale: Input should be less than or equal to 4" in capsys.readouterr().err
