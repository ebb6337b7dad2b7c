"""The DeploymentHandle API, used as Python code in the cluster uses it: from another Serve deployment."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

SMALL = {"size": "64x64", "num_frames": 9, "num_inference_steps": 2}


def test_a_deployment_submits_follows_fetches_lists_cancels(serve_app) -> None:
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Caller:
        """Another application's code: it reaches the video app by name, as any deployment or Ray job can."""

        async def __call__(self, app_name: str) -> dict:
            from serve_app.requests import ApiError

            app = serve.get_app_handle(app_name)
            job = await app.submit_job.remote({"prompt": "through a handle", "seed": 3, **SMALL})
            phases = [update["phase"] async for update in app.options(stream=True).follow_job.remote(job["id"])]
            finished = await app.wait_for_job.remote(job["id"])
            video = await app.job_content.remote(job["id"])
            url = await app.job_video_url.remote(job["id"])
            listed = await app.list_jobs.remote(limit=5)

            slow = await app.submit_job.remote({"prompt": "cancel me", **SMALL, "num_inference_steps": 100})
            cancelled = await app.cancel_job.remote(slow["id"])
            deleted = await app.delete_job.remote(slow["id"])
            try:
                await app.get_job.remote(slow["id"])
                missing = None
            except ApiError as error:
                missing = (error.status_code, error.code)
            try:
                await app.submit_job.remote({"prompt": "bad", **SMALL, "num_frames": 8})
                refused = None
            except ApiError as error:
                refused = (error.status_code, error.message)
            return dict(job=job, phases=phases, finished=finished, video_size=len(video), url=url,
                        listed=[item["id"] for item in listed["data"]], cancelled=cancelled["status"],
                        deleted=deleted["deleted"], missing=missing, refused=refused)

    caller = serve.run(Caller.bind(), name="handle-caller", route_prefix=None)
    try:
        seen = caller.remote(serve_app.name).result(timeout_s=180)
    finally:
        serve.delete("handle-caller")

    assert seen["job"]["status"] == "queued" and seen["job"]["seed"] == 3
    assert seen["phases"][-1] == "done" and "denoising" in seen["phases"]
    assert seen["finished"]["status"] == "completed" and seen["video_size"] > 1000
    assert seen["url"].endswith(f"{seen['job']['id']}/video.mp4")
    assert (serve_app.artifact_dir / seen["job"]["id"] / "video.mp4").stat().st_size == seen["video_size"]
    assert seen["job"]["id"] in seen["listed"]
    assert seen["cancelled"] == "cancelled" and seen["deleted"] is True
    assert seen["missing"] == (404, "not_found")
    assert seen["refused"][0] == 422 and "num_frames must be 4k+1" in seen["refused"][1]
