"""The Grafana dashboard of the service, built with grafana-foundation-sdk: `python cluster/observability/dashboard.py`
rewrites skyreels-dashboard.json next to this file (tests/cluster/test_observability.py checks it is current).

Every query reads the metrics of deployments.metrics (as Ray exports them, `ray_` first) or Serve's own. Counters
and histograms carry one series per process (Ray's `WorkerId` label): the queries sum over it; the queue's gauges
read the same on every ingress replica: the queries take the max. The `application` variable picks Serve
applications (the metrics recorded in a Serve replica carry Serve's `application` label).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, QueryVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).with_name("skyreels-dashboard.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "[$__rate_interval]"


def query(expr: str, legend: str = "") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend or "__auto")


def series(title: str, unit: str, *queries: Dataquery, description: str = "", width: int = 8) -> Timeseries:
    panel = Timeseries().title(title).unit(unit).datasource(DATASOURCE).height(8).span(width)
    for target in queries:
        panel = panel.with_target(target)
    return panel.description(description) if description else panel


def stat(title: str, unit: str, expr: str, description: str) -> Stat:
    return (Stat().title(title).unit(unit).datasource(DATASOURCE).height(4).span(6).description(description)
            .with_target(query(expr)))


def quantiles(metric: str, by: str, selector: str) -> list[Dataquery]:
    return [query(f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}{RATE})))",
                  f"p{round(q * 100)} {{{{{by}}}}}") for q in (0.5, 0.95)]


def sections() -> list[tuple[str, list[Timeseries | Stat]]]:
    app = 'application=~"$application"'
    finished, stage = "ray_skyreels_jobs_finished_total", "ray_skyreels_stage_seconds"
    return [
        ("Overview", [
            stat("Queued jobs", "short", f"max(ray_skyreels_queue_jobs{{{app}}})",
                 "Jobs waiting to start, from the job store."),
            stat("Oldest wait", "s", f"max(ray_skyreels_queue_oldest_wait_seconds{{{app}}})",
                 "How long the oldest waiting job has waited."),
            stat("Completed (1h)", "short", f'sum(increase({finished}{{{app}, status="completed"}}[1h]))',
                 "Jobs completed in the last hour, over every ingress replica."),
            stat("Gang rebuilds", "short", f"sum(ray_skyreels_gang_rebuilds_total{{{app}}})",
                 "DiT gangs torn down (a worker died or hung) since the cluster started."),
        ]),
        ("Throughput", [
            series("Jobs finished per minute", "short", query(
                f"sum by (status) (rate({finished}{{{app}}}{RATE})) * 60", "{{status}}"),
                description="By final status; summed over the ingress replicas."),
            series("Jobs submitted per minute", "short", query(
                f"sum by (model, priority) (rate(ray_skyreels_jobs_submitted_total{{{app}}}{RATE})) * 60",
                "{{model}} {{priority}}"),
                query(f"sum(rate(ray_skyreels_jobs_rejected_total{{{app}}}{RATE})) * 60", "refused (queue full)")),
            series("Job seconds (first start to end)", "s", *quantiles("ray_skyreels_job_seconds", "model", app)),
        ]),
        ("Queue", [
            series("Queued jobs", "short", query(f"max(ray_skyreels_queue_jobs{{{app}}})", "queued"), width=12),
            series("Oldest wait", "s", query(f"max(ray_skyreels_queue_oldest_wait_seconds{{{app}}})", "oldest wait"),
                   width=12),
        ]),
        ("Stage latency", [
            series("Stage seconds", "s", *quantiles(stage, "stage", app), width=12,
                   description="One unit of work where it ran: text, image, a denoise step, weights swap, LoRA load, "
                               "decode, mux, checkpoint."),
            series("Serve request latency by deployment", "ms",
                   *quantiles("ray_serve_deployment_processing_latency_ms", "deployment", app), width=12),
        ]),
        ("GPU and caches", [
            series("Peak device memory per gang rank", "bytes", query(
                "max by (rank, NodeAddress) (ray_skyreels_gang_peak_memory_bytes)", "rank {{rank}} on {{NodeAddress}}"),
                description="Of each rank's last command (CUDA only; the gang's workers are not Serve replicas: "
                            "every application's)."),
            series("Step cache: forwards skipped", "percentunit", query(
                f'sum(rate(ray_skyreels_step_cache_forwards_total{{{app}, outcome="skipped"}}{RATE})) / '
                f"sum(rate(ray_skyreels_step_cache_forwards_total{{{app}}}{RATE}))", "skipped")),
            series("LoRA adapter cache hits", "percentunit", query(
                f'sum(rate(ray_skyreels_lora_cache_lookups_total{{{app}, outcome="hit"}}{RATE})) / '
                f"sum(rate(ray_skyreels_lora_cache_lookups_total{{{app}}}{RATE}))", "hit ratio")),
        ]),
        ("Failures and re-runs", [
            series("Failed share of finished jobs", "percentunit", query(
                f'sum(rate({finished}{{{app}, status="failed"}}{RATE})) / sum(rate({finished}{{{app}}}{RATE}))',
                "failed")),
            series("Failed jobs by cause", "short", query(
                f'sum by (cause) (increase({finished}{{{app}, status="failed"}}{RATE}))', "{{cause}}")),
            series("Re-runs by cause", "short", query(
                f"sum by (cause) (increase(ray_skyreels_job_reruns_total{{{app}}}{RATE}))", "{{cause}}")),
            series("Webhook deliveries", "short", query(
                f"sum by (outcome) (increase(ray_skyreels_webhook_deliveries_total{{{app}}}{RATE}))", "{{outcome}}")),
        ]),
        ("Replicas", [
            series("Healthy replicas per deployment", "short", query(
                f"sum by (application, deployment) (ray_serve_deployment_replica_healthy{{{app}}})",
                "{{application}} {{deployment}}"), width=24),
        ]),
    ]


def build() -> Dashboard:
    dashboard = (Dashboard("SkyReels-V1 service").uid("skyreels-service").tags(["skyreels", "ray-serve", "generated"])
                 .refresh("30s").time("now-6h", "now").timezone("browser")
                 .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
                 .with_variable(QueryVariable("application").label("Serve application").datasource(DATASOURCE)
                                .query("label_values(ray_skyreels_jobs_submitted_total, application)")
                                .multi(True).include_all(True).all_value(".*")))
    ids = iter(range(1, 1000))
    for title, panels in sections():
        dashboard = dashboard.with_row(Row(title).id(next(ids)))
        for panel in panels:
            dashboard = dashboard.with_panel(panel.id(next(ids)))
    return dashboard


def render() -> str:
    return json.dumps(json.loads(JSONEncoder(sort_keys=True, indent=2).encode(build().build())), indent=2,
                      sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
