"""What an operator watches, against the real thing: a Prometheus server (Debian's `prometheus` package, started here
on loopback) scrapes the session Ray's metrics export while an app with two ingress replicas on PostgreSQL runs a
known set of jobs (completed, one failed, one cancelled, one re-run after its gang lost a worker); PromQL over its
HTTP API gives exactly those counts, summed over whichever replica ran each job. The same jobs leave one trace each
(OpenTelemetry, the file exporter) with spans from the processes of their stages and gang ranks.

One app and one Prometheus for the module (the sim model: stand-in stages with GPU timings at 1/100).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deployments.metrics import RAY_SERIES
from serve_app.client import VideoClient
from skyreels.parallel.group import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
APP = "observed"
SIM = "sim?time_factor=0.01"
SMALL = dict(size="64x64", num_frames=9, num_inference_steps=4)
# the workload of record: the sim holds each step for ~0.1 s (1/100 of an A800 gang's), a few seconds in all
LONG = dict(size="960x544", num_frames=97, num_inference_steps=30)
TIMEOUT_S = 120


def until(condition: Callable[[], Any], timeout_s: float = TIMEOUT_S, every_s: float = 0.2) -> Any:
    """Polls `condition` until it returns something true; returns that."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every_s)
    return value


@dataclass(frozen=True)
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def values(self, expr: str, by: str) -> dict[str, float]:
        return {r["metric"].get(by, ""): float(r["value"][1]) for r in self.query(expr)}

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def prometheus(ray_metrics_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Prometheus is not installed (apt-get install prometheus)")
    root = tmp_path_factory.mktemp("prometheus")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(ROOT / "cluster" / "observability" / "alerts.yaml")],
              "scrape_configs": [{"job_name": "ray",
                                  "static_configs": [{"targets": [f"127.0.0.1:{ray_metrics_port}"]}]}]}
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (root / "prometheus.log").open("w") as log:
        server = subprocess.Popen([binary, f"--config.file={root / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return server.poll() is not None  # died: the assert below says so

        until(ready, 60)
        assert server.poll() is None, (root / "prometheus.log").read_text()[-2000:]
        yield Prometheus(url)
    finally:
        server.terminate()
        server.wait(30)


@dataclass(frozen=True)
class Scenario:
    jobs: dict[str, dict]  # the final record of each job, by its role
    ran_by: dict[str, str]  # job id -> the ingress replica (replica tag) that claimed it last
    trace_dir: Path


def _gang_worker(replica_of: str) -> Any:
    """Rank 1 of the app's DiT gang (the worker actors are named after their Denoiser replica)."""
    import ray

    names = ray.util.list_named_actors(all_namespaces=True)
    (replica,) = [a["name"].rsplit("#", 1)[1] for a in names if f"{replica_of}#Denoiser#" in a["name"]]
    (worker,) = [a for a in names if a["name"] == f"DiTWorker:{replica}:1"]
    return ray.get_actor(worker["name"], namespace=worker["namespace"])


@pytest.fixture(scope="module")
def scenario(ray_local: int, postgres_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    import psycopg
    import ray
    from ray import serve

    from conftest import deploy

    trace_dir = tmp_path_factory.mktemp("spans")
    database = postgres_server.new_database()
    app = deploy(ray_local, tmp_path_factory.mktemp(APP), APP, f"/{APP}", model=SIM, i2v_model=SIM,
                 database_url=database, ingress_replicas=2, max_running_jobs=2, job_lease_s=3.0,
                 job_heartbeat_s=0.5, queue_poll_s=0.1, gpus_per_replica=2,
                 tracing={"exporter": "file", "file_dir": str(trace_dir)})
    try:
        with VideoClient(app.url, timeout_s=TIMEOUT_S) as client:
            ids = {f"done {i}": client.submit(f"observed {i}", seed=i, **SMALL)["id"] for i in range(4)}
            ids["failed"] = client.submit("observed #fail-decode", seed=10, **SMALL)["id"]
            ids["cancelled"] = client.submit("observed, cancelled", seed=11, **LONG)["id"]
            until(lambda: client.get(ids["cancelled"])["current_step"] >= 1)  # on the gang
            client.cancel(ids["cancelled"])
            ids["re-run"] = client.submit("observed, re-run", seed=12, **LONG)["id"]
            until(lambda: client.get(ids["re-run"])["current_step"] >= 1)
            ray.kill(_gang_worker(APP))  # the gang is torn down and rebuilt; the job runs again
            jobs = {role: client.wait(job_id, timeout_s=TIMEOUT_S, raise_on_failure=False)
                    for role, job_id in ids.items()}
        with psycopg.connect(database) as conn:
            ran_by = {job_id: owner.split("#", 1)[1] for job_id, owner in
                      conn.execute("SELECT id, lease_owner FROM jobs").fetchall()}
        yield Scenario(jobs, ran_by, trace_dir)
    finally:
        serve.delete(app.name)


def test_prometheus_counts_each_job_once_whichever_replica_ran_it(scenario: Scenario, prometheus: Prometheus) -> None:
    jobs = scenario.jobs
    assert {role: job["status"] for role, job in jobs.items()} == {
        **{f"done {i}": "completed" for i in range(4)}, "failed": "failed", "cancelled": "cancelled",
        "re-run": "completed"}
    assert jobs["failed"]["error"]["code"] == "stage_failed"
    assert [a["error"]["code"] if a["error"] else None for a in jobs["re-run"]["attempts"]] == ["worker_died", None]
    replicas = set(scenario.ran_by.values())
    assert len(replicas) == 2  # both ingress replicas ran jobs

    app = f'application="{APP}"'
    finished = f"ray_skyreels_jobs_finished_total{{{app}}}"
    expected = {"completed": 5, "failed": 1, "cancelled": 1}
    # the agent and Prometheus each take a second or so: wait for the counts, then hold them to every figure
    until(lambda: prometheus.values(f"sum by (status) ({finished})", "status") == expected, 60)
    assert prometheus.value(f"sum(ray_skyreels_jobs_submitted_total{{{app}}})") == 7
    assert prometheus.values(f"sum by (model, priority) (ray_skyreels_jobs_submitted_total{{{app}}})", "model") == {
        "skyreels-v1-t2v": 7}
    assert prometheus.values(f"sum by (cause) (ray_skyreels_job_reruns_total{{{app}}})", "cause") == {
        "worker_died": 1}
    # each replica counted the jobs it ran: the same split as the store's record of who ran which
    assert prometheus.values(f"sum by (replica) ({finished})", "replica") == dict(Counter(scenario.ran_by.values()))
    # histogram counts: one per completed job, one per stage call that ran
    stages = prometheus.values(f"sum by (stage) (ray_skyreels_stage_seconds_count{{{app}}})", "stage")
    assert stages["decode"] == stages["mux"] == 5  # the failed decode recorded nothing
    assert stages["checkpoint"] == 5  # a run reports its checkpoint once it ends well
    assert stages["text_encode"] == 8  # 4 + failed + cancelled + the re-run's two runs
    assert stages["denoise_step"] >= 4 * 4 + 4 + 30
    assert prometheus.value(f"sum(ray_skyreels_job_seconds_count{{{app}}})") == 5
    assert until(lambda: prometheus.value(f"sum(ray_skyreels_gang_rebuilds_total{{{app}}})"), 30) == 1
    # the queue's gauges come from the store: both replicas report the same (empty) queue
    assert prometheus.values(f"ray_skyreels_queue_jobs{{{app}}}", "replica") == dict.fromkeys(replicas, 0.0)
    assert prometheus.value(f"max(ray_skyreels_queue_oldest_wait_seconds{{{app}}})") == 0


def test_dashboard_queries_and_alert_rules_run_on_the_real_series(scenario: Scenario, prometheus: Prometheus) -> None:
    for name in RAY_SERIES:  # Serve's series that the dashboard and the rules read exist under these names
        assert prometheus.query(f'count({name}{{application="{APP}"}})'), name
    dashboard = json.loads((ROOT / "cluster" / "observability" / "skyreels-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            prometheus.query(target["expr"].replace("$application", APP).replace("$__rate_interval", "1m"))
    rules = until(lambda: [rule for group in httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"][
        "groups"] for rule in group["rules"] if rule.get("lastEvaluation", "0001").startswith("20")], 30)
    assert {rule["name"]: rule["health"] for rule in rules} == {
        "SkyReelsQueueWaitOverTarget": "ok", "SkyReelsJobFailureRate": "ok", "SkyReelsGangRebuilds": "ok",
        "SkyReelsStageWithoutHealthyReplica": "ok"}


def _spans(trace_dir: Path) -> list[dict]:
    return [json.loads(line) for path in trace_dir.glob("spans-*.jsonl") for line in path.read_text().splitlines()]


def test_a_job_is_one_trace_across_the_processes_of_its_stages(scenario: Scenario) -> None:
    job_id = scenario.jobs["done 0"]["id"]
    spans = [s for s in _spans(scenario.trace_dir) if s["attributes"].get("skyreels.job_id") == job_id]
    (trace_id,) = {s["context"]["trace_id"] for s in spans}  # one trace
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) >= {"job", "text_encode", "TextEncoder.encode", "denoise", "Denoiser.denoise",
                            "DiTWorker.Denoise", "decode", "Vae.decode_to_storage"}
    ranks = sorted(s["attributes"]["rank"] for s in spans if s["name"] == "DiTWorker.Denoise")
    assert ranks == [0, 1]

    def process(span: dict) -> tuple[str, int]:
        return span["resource"]["attributes"]["skyreels.process"], span["resource"]["attributes"]["process.pid"]

    def parent(span: dict) -> dict:
        return next(s for s in spans if s["context"]["span_id"] == span["parent_id"])

    assert process(by_name["job"])[0] == "VideoIngress"
    served = {name: process(by_name[name]) for name in ("TextEncoder.encode", "Denoiser.denoise",
                                                         "Vae.decode_to_storage")}
    workers = {process(s) for s in spans if s["name"] == "DiTWorker.Denoise"}
    assert [p for p, _ in served.values()] == ["TextEncoder", "Denoiser", "Vae"]
    assert {p for p, _ in workers} == {"DiTWorker rank 0", "DiTWorker rank 1"}
    assert len({pid for _, pid in [process(by_name["job"]), *served.values(), *workers]}) == 6  # six processes
    # each served span hangs under its caller's span, under the job's
    for name, caller in (("TextEncoder.encode", "text_encode"), ("Denoiser.denoise", "denoise"),
                         ("Vae.decode_to_storage", "decode")):
        assert parent(by_name[name])["name"] == caller and parent(parent(by_name[name]))["name"] == "job"
    assert all(parent(s)["name"] == "Denoiser.denoise" for s in spans if s["name"] == "DiTWorker.Denoise")
    assert by_name["job"]["parent_id"] is None and trace_id
