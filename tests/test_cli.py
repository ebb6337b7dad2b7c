from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
from PIL import Image

from skyreels.cli import main
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
    assert "num_frames must be 4k+1" in capsys.readouterr().err


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
