"""cluster/observability: the dashboard is the builder's output and reads only metrics that exist; the alert rules
pass promtool's check and their unit tests; the KubeRay manifest carries the same rules; the metric names follow
Prometheus's conventions and the README lists them all. Fast: no Ray."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deployments.metrics import METRICS, RAY_SERIES, Kind

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "cluster" / "observability"
KNOWN_SERIES = {name for spec in METRICS for name in spec.series} | set(RAY_SERIES)
SERIES_NAME = re.compile(r"\bray_[a-z_]+")


def _dashboard_module():
    pytest.importorskip("grafana_foundation_sdk", reason="pip install -e '.[dev]'")
    spec = importlib.util.spec_from_file_location("skyreels_dashboard", OBSERVABILITY / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboard_exprs(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def _rule_exprs(groups: list[dict]) -> list[str]:
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_the_committed_dashboard_is_what_the_builder_makes() -> None:
    module = _dashboard_module()
    assert (OBSERVABILITY / "skyreels-dashboard.json").read_text() == module.render(), \
        "run: python cluster/observability/dashboard.py"


def test_dashboard_and_rules_read_only_metrics_that_exist() -> None:
    dashboard = json.loads((OBSERVABILITY / "skyreels-dashboard.json").read_text())
    rules = yaml.safe_load((OBSERVABILITY / "alerts.yaml").read_text())["groups"]
    exprs = _dashboard_exprs(dashboard) + _rule_exprs(rules)
    used = {name for expr in exprs for name in SERIES_NAME.findall(expr)}
    assert used <= KNOWN_SERIES, used - KNOWN_SERIES
    # every panel but the rows has a query; every metric of ours is on the dashboard
    assert all(panel.get("targets") for panel in dashboard["panels"] if panel["type"] != "row")
    assert [spec.name for spec in METRICS if not set(spec.series) & used] == []
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    for command in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts.test.yaml"],
                    ["check", "config", "prometheus.yml"]):
        run = subprocess.run(["promtool", *command], cwd=OBSERVABILITY, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 4 rules found" in subprocess.run(["promtool", "check", "rules", "alerts.yaml"], cwd=OBSERVABILITY,
                                                       capture_output=True, text=True, timeout=60).stdout


def test_kuberay_and_the_launchers_plug_them_in() -> None:
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all((ROOT / "cluster" / "kuberay-rayservice.yaml").read_text())
            if doc}
    rules = yaml.safe_load((OBSERVABILITY / "alerts.yaml").read_text())
    assert docs["PrometheusRule"]["spec"]["groups"] == rules["groups"]
    assert docs["PodMonitor"]["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "interval": "15s"}]
    cluster = docs["RayService"]["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        ports = {port["name"]: port["containerPort"] for port in pod["template"]["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == 8080
    for launcher in ("aws.yaml", "gcp.yaml"):
        config = yaml.safe_load((ROOT / "cluster" / launcher).read_text())
        for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
            assert any("--metrics-export-port=8080" in command for command in commands)


def test_metric_names_are_prometheus_conventional_and_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for spec in METRICS:
        assert re.fullmatch(r"skyreels_[a-z_]+", spec.name)
        assert spec.name.endswith("_total") == (spec.kind is Kind.COUNTER), spec.name
        if spec.kind is Kind.HISTOGRAM:
            assert spec.name.endswith("_seconds") and list(spec.boundaries) == sorted(spec.boundaries)
        assert f"`{spec.exported}`" in readme, f"README's metric table lacks {spec.exported}"
