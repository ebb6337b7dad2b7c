"""The planner's model against arithmetic it must reproduce: one job's stages end to end, a queue behind one gang,
weight swaps between models, re-runs after failures, and Serve's autoscaling up and back down."""

from __future__ import annotations

import pytest

from skyreels.planner.hardware import scaled_profile
from skyreels.planner.layouts import Layout, StagePlan
from skyreels.planner.model import Arrival, Autoscaling, ServedAppModel, quantile
from skyreels.sim.profile import WORKLOAD, published_a800

A800 = "A800-80GB"
PROFILE = published_a800()
PROFILES = {A800: PROFILE}


def one_job_seconds(gang: int, decode_on: str) -> float:
    cfg, ulysses = (2, gang // 2) if gang % 2 == 0 else (1, gang)
    decode_ranks = gang if decode_on == "gang" else 1
    return (PROFILE.text_encode_seconds / 2 + 30 * PROFILE.step_seconds(WORKLOAD, cfg, ulysses)
            + PROFILE.decode_seconds(WORKLOAD, decode_ranks) + PROFILE.mux.at(WORKLOAD))


@pytest.mark.parametrize(("gang", "decode_on"), [(8, "gang"), (2, "vae"), (3, "gang")])
def test_a_lone_job_takes_its_stages_seconds(gang: int, decode_on: str) -> None:
    layout = Layout("one", A800, gang, 1, decode_on,
                    vae=StagePlan(1, "own" if decode_on == "vae" else "beside"))
    (job,) = ServedAppModel(layout.modelled(PROFILES)).run([Arrival(5.0, WORKLOAD)]).completed
    assert job.latency_s == pytest.approx(one_job_seconds(gang, decode_on))


def test_jobs_queue_behind_one_gang_and_the_staged_decode_overlaps_the_next_denoise() -> None:
    arrivals = [Arrival(0.0, WORKLOAD) for _ in range(3)]
    mono = ServedAppModel(Layout("mono", A800, 8, 1, "gang").modelled(PROFILES)).run(arrivals)
    staged = ServedAppModel(Layout("staged", A800, 8, 1, "vae", vae=StagePlan(1, "own")).modelled(PROFILES)).run(
        arrivals)
    text = PROFILE.text_encode_seconds / 2
    denoise = 30 * PROFILE.step_seconds(WORKLOAD, 2, 4)
    gang_decode = PROFILE.decode_seconds(WORKLOAD, 8) + PROFILE.mux.at(WORKLOAD)
    vae_decode = PROFILE.decode_seconds(WORKLOAD, 1) + PROFILE.mux.at(WORKLOAD)
    # mono: each job's decode ends its denoise call, so the first job is done before the gang takes the next
    assert min(j.completed_s for j in mono.completed) == pytest.approx(text + denoise + gang_decode, rel=0.01)
    assert max(j.completed_s for j in mono.completed) == pytest.approx(text + 3 * (denoise + gang_decode), rel=0.01)
    # staged: the gang denoises back to back; the last decode follows the last denoise
    assert max(j.completed_s for j in staged.completed) == pytest.approx(text + 3 * denoise + vae_decode, rel=0.01)


def test_a_gang_swaps_weights_only_when_the_model_changes() -> None:
    layout = Layout("mono", A800, 8, 1, "gang")
    same = ServedAppModel(layout.modelled(PROFILES)).run([Arrival(0.0, WORKLOAD), Arrival(1000.0, WORKLOAD)])
    mixed = ServedAppModel(layout.modelled(PROFILES)).run([Arrival(0.0, WORKLOAD),
                                                           Arrival(1000.0, WORKLOAD, task="i2v")])
    image = PROFILE.vae_encode.at(WORKLOAD.first_frame())
    assert mixed.jobs[1].latency_s - same.jobs[1].latency_s == pytest.approx(PROFILE.weight_swap_seconds + image)


def test_failed_runs_run_again_and_the_last_fails_the_job() -> None:
    layout = Layout("mono", A800, 8, 1, "gang")
    outcome = ServedAppModel(layout.modelled(PROFILES, fail_rate=0.3, max_attempts=2), seed=1).run(
        [Arrival(i * 500.0, WORKLOAD) for i in range(40)])
    runs = [job.runs for job in outcome.jobs]
    assert len(outcome.jobs) == 40 and all(job.completed_s is not None for job in outcome.jobs)
    assert max(runs) == 2 and 0 < sum(job.failed for job in outcome.jobs) < 40
    assert all(job.runs == 2 for job in outcome.jobs if job.failed)


def test_the_gangs_scale_up_under_a_burst_and_back_down_when_idle() -> None:
    scaling = Autoscaling(min_replicas=1, max_replicas=3, target_ongoing_requests=1, upscale_delay_s=30,
                          downscale_delay_s=300)
    layout = Layout("mono", A800, 8, 1, "gang")
    app = layout.modelled(PROFILES, autoscale={"Denoiser": scaling}, max_nodes={A800: 3})
    outcome = ServedAppModel(app).run([Arrival(0.0, WORKLOAD) for _ in range(12)], until_s=20000)
    gangs = [count for _, count in outcome.replicas_over_time["Denoiser"]]
    assert max(gangs) == 3 and gangs[-1] == 1
    nodes = [count for _, count in outcome.nodes_over_time]
    assert max(nodes) == 3 and nodes[-1] == 1  # the idle nodes went after node_idle_s
    first_new = outcome.replicas_over_time["Denoiser"][1][0]
    assert first_new >= 30 + app.node_start_s + app.gang.load_s  # the delay, a node's start, the model's load
    assert len(outcome.completed) == 12
    fixed = ServedAppModel(layout.modelled(PROFILES)).run([Arrival(0.0, WORKLOAD) for _ in range(12)])
    assert quantile([j.latency_s for j in outcome.completed], 0.95) < quantile(
        [j.latency_s for j in fixed.completed], 0.95)


def test_a_profile_scaled_to_its_own_type_is_itself_and_faster_types_are_faster() -> None:
    assert scaled_profile(A800).step_seconds(WORKLOAD) == pytest.approx(PROFILE.step_seconds(WORKLOAD))
    assert scaled_profile("H100-80GB").step_seconds(WORKLOAD) < PROFILE.step_seconds(WORKLOAD) / 2
    assert scaled_profile("L4-24GB").step_seconds(WORKLOAD) > 2 * PROFILE.step_seconds(WORKLOAD)


def test_a_stage_on_a_gang_gpu_takes_turns_with_the_gang() -> None:
    """A co-located Vae decodes job 1 while the gang denoises job 2: the decode takes twice its time, and the
    denoising as long again as the decode's GPU time."""
    layout = Layout("coloc", A800, 8, 1, "vae", text=StagePlan(1, "own"), vae=StagePlan(1, "colocated"))
    outcome = ServedAppModel(layout.modelled(PROFILES)).run([Arrival(0.0, WORKLOAD), Arrival(0.0, WORKLOAD)])
    first, second = sorted(outcome.completed, key=lambda job: job.completed_s)
    text = PROFILE.text_encode_seconds / 2
    denoise = 30 * PROFILE.step_seconds(WORKLOAD, 2, 4)
    decode = PROFILE.decode_seconds(WORKLOAD) + PROFILE.mux.at(WORKLOAD)
    assert first.latency_s == pytest.approx(text + denoise + 2 * decode)  # shared the GPU with job 2's denoise
    # its denoising began when job 1's ended and ran a decode longer; then its own decode, alone
    assert second.latency_s == pytest.approx(text + 2 * denoise + decode + decode)
