"""The sim timing profile: FLOP and pixel scaling, the gang model, and the published figures it reproduces."""

from __future__ import annotations

from pathlib import Path

import pytest

from skyreels.random_full import transformer_config
from skyreels.request import Task
from skyreels.sim.profile import (
    PUBLISHED_A800_SECONDS,
    WORKLOAD,
    WORKLOAD_STEPS,
    DitStepSeconds,
    Efficiency,
    PixelScaledSeconds,
    SimProfile,
    VideoShape,
    published_a800,
)


def test_sim_profile_scales_the_dit_by_flops_and_the_vae_by_pixels(tmp_path: Path) -> None:
    measured = VideoShape(height=544, width=960, num_frames=97)
    profile = SimProfile(
        device="H100", measured_by="test", text_encode_seconds=0.1,
        dit_step=DitStepSeconds(seconds_per_step=8.0, measured_at=measured, prompt_tokens=40,
                                transformer_config=transformer_config(Task.T2V), path="lossless"),
        vae_encode=PixelScaledSeconds(seconds=0.2, measured_at=measured.first_frame()),
        vae_decode=PixelScaledSeconds(seconds=20.0, measured_at=measured),
        mux=PixelScaledSeconds(seconds=2.0, measured_at=measured),
    )
    profile.save(tmp_path / "profile.json")
    assert SimProfile.load(tmp_path / "profile.json").model_dump_json() == profile.model_dump_json()
    assert profile.dit_step.flops_per_step(measured) == pytest.approx(2 * 2.61e15, rel=0.01)  # DESIGN.md's count

    same = profile.job_seconds(measured, steps=30, i2v=True)
    assert same == pytest.approx({"text_encode": 0.1, "image_encode": 0.2, "denoise": 240.0, "decode": 20.0,
                                  "mux": 2.0})
    longer = profile.job_seconds(VideoShape(height=544, width=960, num_frames=193), steps=30, i2v=False)
    assert longer["decode"] == pytest.approx(20.0 * 193 / 97) and longer["image_encode"] == 0.0
    assert longer["denoise"] > 2 * same["denoise"]  # attention grows with the square of the tokens


# cfg_degree x ulysses_degree of the gangs SkyReelsInfer published
PUBLISHED_MESHES = {1: (1, 1), 2: (2, 1), 4: (2, 2), 8: (2, 4)}


@pytest.mark.parametrize("gpus", PUBLISHED_A800_SECONDS)
def test_the_default_profile_takes_the_published_seconds(gpus: int) -> None:
    profile = published_a800()
    job = profile.job_seconds(WORKLOAD, WORKLOAD_STEPS, i2v=False)
    step = profile.step_seconds(WORKLOAD, *PUBLISHED_MESHES[gpus])
    seconds = job["text_encode"] + WORKLOAD_STEPS * step + profile.decode_seconds(WORKLOAD, gpus) + job["mux"]
    assert seconds == pytest.approx(PUBLISHED_A800_SECONDS[gpus])


def test_gangs_between_the_published_ones_interpolate_their_efficiency() -> None:
    profile = published_a800()
    one = profile.step_seconds(WORKLOAD)
    speedups = {(cfg, ulysses): one / profile.step_seconds(WORKLOAD, cfg, ulysses)
                for cfg, ulysses in [(2, 1), (1, 3), (2, 2), (2, 3), (2, 4)]}
    assert speedups[(2, 1)] < 2 and speedups[(2, 2)] < 4 < speedups[(2, 3)] < 6 < speedups[(2, 4)] < 8
    assert 2 < speedups[(1, 3)] < 3  # no CFG split on an odd gang: Ulysses over all three
    # without true CFG a step is one forward, and the CFG half of a gang has nothing to add
    assert profile.step_seconds(WORKLOAD, 2, 2, true_cfg=False) == pytest.approx(
        profile.step_seconds(WORKLOAD, 1, 2) / 2)


def test_efficiency_is_piecewise_linear_in_log2_and_extrapolates_the_last_segment() -> None:
    efficiency = Efficiency(points={1: 1.0, 2: 0.9, 4: 0.8})
    assert efficiency.at(2) == 0.9 and efficiency.speedup(4) == pytest.approx(3.2)
    assert efficiency.at(3) == pytest.approx(0.9 - 0.1 * (1.585 - 1), abs=1e-3)
    assert efficiency.at(8) == pytest.approx(0.7)


def test_a_one_gpu_measurement_takes_the_published_gang_model(tmp_path: Path) -> None:
    measured = published_a800().model_dump(exclude={"gang"})
    profile = SimProfile.model_validate(measured)
    assert profile.gang == published_a800().gang
    path = tmp_path / "profile.json"
    profile.save(path)
    assert SimProfile.load(path).model_dump_json() == profile.model_dump_json()
