"""Where a real-size job's wall time goes on the served app: the GPU work (what the sim's stages hold), the mux,
and what Ray and Serve add around it, from the job's OpenTelemetry trace (deployments/tracing.py's file exporter).

    python benchmarks/job_breakdown.py                         # gpu8's layout: a gang of 8 decoding, 3 jobs
    python benchmarks/job_breakdown.py --gang 2 --decode_on vae

A local Ray runs the app on the `sim` model source at `--time_factor`; each lone job (544x960x97, 30 steps)
leaves one trace. Per job, in wall seconds:
- held: the sim's holds (text, steps, decode: the GPU time at that factor);
- mux: frames to mp4 (real CPU work, on the decoder);
- runner: the job span less its stage calls (claim, records, progress between calls);
- hops: each stage call's client span less its replica's server span (routing, arguments and results through
  the object store: embeddings, latents);
- gang dispatch: the Denoiser replica's span less its slowest rank's (commands to the ranks, the latents back);
- in the ranks / replicas: the server spans less what they hold and the mux.
Orchestration is everything but held and mux; its share is taken of the real-size job at real time (held / time
factor + orchestration), which is what the same overhead costs a GPU run. Writes
benchmarks/results/job_breakdown.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import ray

from serve_app.app import AppConfig
from serve_app.client import VideoClient
from serve_app.launch import start_local
from skyreels.parallel.group import free_port
from skyreels.sim.profile import WORKLOAD, WORKLOAD_STEPS, SimProfile, mesh_of
from skyreels.sim.source import SimOptions

ROOT = Path(__file__).resolve().parents[1]
JOB_ID = "skyreels.job_id"


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def spans_by_job(span_dir: Path) -> dict[str, list[dict]]:
    jobs: dict[str, list[dict]] = defaultdict(list)
    for path in span_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            span = json.loads(line)
            job = span["attributes"].get(JOB_ID)
            if job:
                span["start"], span["end"] = _seconds(span["start_time"]), _seconds(span["end_time"])
                span["seconds"] = span["end"] - span["start"]
                jobs[job].append(span)
    return jobs


def held_seconds(gang: int, decode_on: str, profile: SimProfile, factor: float) -> dict[str, float]:
    """What the sim's stages hold for one job of the workload (wall seconds at `factor`)."""
    cfg, ulysses = mesh_of(gang)
    return {"text": profile.text_encode_seconds / 2 * factor,
            "gang": WORKLOAD_STEPS * profile.step_seconds(WORKLOAD, cfg, ulysses) * factor,
            "decode": profile.decode_seconds(WORKLOAD, gang if decode_on == "gang" else 1) * factor}


def breakdown(spans: list[dict], job: dict, held: dict[str, float]) -> dict[str, float]:
    def total(name: str, kind: str | None = None) -> float:
        return sum(s["seconds"] for s in spans if s["name"] == name and (kind is None or s["kind"].endswith(kind)))

    def slowest(name: str) -> float:
        return max((s["seconds"] for s in spans if s["name"] == name), default=0.0)

    mux = job["metrics"].get("mux", 0.0)
    on_gang = bool(total("Denoiser.decode_to_storage"))  # then decoded inside the denoise call: no hop of its own
    calls = {"text_encode": "TextEncoder.encode", "denoise": "Denoiser.denoise",
             "decode": "Denoiser.decode_to_storage" if on_gang else "Vae.decode_to_storage"}
    client = {name: total(name, "CLIENT") for name in calls}
    server = {name: total(server_name, "SERVER") for name, server_name in calls.items()}
    if on_gang:
        server["denoise"] -= server["decode"]
    ranks = {"denoise": slowest("DiTWorker.Denoise"), "decode": slowest("DiTWorker.Decode")}
    job_s = total("job")
    parts = {
        "job": job_s,
        "held": sum(held.values()),
        "mux": mux,
        "runner": job_s - sum(client.values()),
        "hops": sum(client[name] - server[name] for name in calls if client[name])
        - (server["decode"] if on_gang else 0.0),  # the denoise call's client span holds the decode too
        "gang dispatch": (server["denoise"] - ranks["denoise"]) + (
            server["decode"] - ranks["decode"] if ranks["decode"] else 0.0),
        "in the ranks and replicas": (server["text_encode"] - held["text"]) + (ranks["denoise"] - held["gang"])
        + ((ranks["decode"] or server["decode"]) - held["decode"] - mux),
    }
    parts["orchestration"] = job_s - parts["held"] - mux
    return parts


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gang", type=int, default=8)
    parser.add_argument("--decode_on", choices=("gang", "vae"), default="gang")
    parser.add_argument("--time_factor", type=float, default=0.1)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "job_breakdown.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="job-breakdown-"))
    source = f"sim?time_factor={args.time_factor}"
    config = AppConfig(model=source, i2v_model=source, device="cpu", dtype="bfloat16", gpus_per_replica=args.gang,
                       decode_on=args.decode_on, worker_cpus=0.1, database_path=str(root / "jobs.sqlite3"),
                       artifact_url=str(root / "artifacts"),
                       tracing={"exporter": "file", "file_dir": str(root / "spans")})
    url = start_local(config, port=free_port())
    with VideoClient(url, timeout_s=600) as client:
        client.wait(client.submit("warm-up", size="64x64", num_frames=9, num_inference_steps=2)["id"])
        jobs = [client.wait(client.submit(f"lone job {i}", seed=i)["id"], timeout_s=900) for i in range(args.jobs)]
    ray.shutdown()
    factor = args.time_factor
    held = held_seconds(args.gang, args.decode_on, SimOptions().timings, factor)
    traces = spans_by_job(root / "spans")
    rows = [breakdown(traces[job["id"]], job, held) for job in jobs]
    mean = {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}
    real_job_s = mean["held"] / factor + mean["orchestration"]
    share = mean["orchestration"] / real_job_s
    report = {"command": "python " + " ".join(sys.argv), "ray": ray.__version__, "gang": args.gang,
              "decode_on": args.decode_on, "time_factor": factor, "jobs": rows, "mean": mean,
              "real_job_s": real_job_s, "orchestration_share": share}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Where a 544x960x97 job's time goes: gang of {args.gang}, decode on {args.decode_on}", "",
             f"`{report['command']}` (Ray {ray.__version__}, local, 2 cores; sim at time factor {factor:g}; "
             f"{args.jobs} lone jobs, each one trace). Wall seconds, mean of the jobs:", "",
             "| part | s |", "| --- | --- |"]
    lines += [f"| {key} | {value:.3f} |" for key, value in mean.items()]
    lines += ["", f"At real time the job takes {real_job_s:.1f} s (held / {factor:g} + orchestration); "
                  f"orchestration (all but the GPU work and the mux) is {mean['orchestration']:.2f} s of it: "
                  f"**{share:.2%}**.", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
