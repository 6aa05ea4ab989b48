"""What can be checked of the deployment without a Docker engine: the compose file against the
compose specification's schema, the Prometheus configuration and alert rules with promtool, the
Grafana provisioning and dashboard against the metrics the service really exports, and the
Dockerfile's two targets (non-root, healthcheck, the right ONNX Runtime)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

from app.observability import Telemetry

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DASHBOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "denoise.json").read_text())


def exported_metric_names() -> set[str]:
    """Every series name the service's /metrics can carry (counters gain _total, histograms three)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix for family in Telemetry().registry.collect() for suffix in suffixes[family.type]
    }


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(
        files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    jsonschema.validate(COMPOSE, schema)


def test_no_compose_command_needs_a_variable_only_grafana_uses() -> None:
    """A required ${VAR:?} anywhere fails every command (ps, logs, restart) where it is unset;
    Grafana's password comes from a secret that only creating its container reads."""
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?\?", text)  # ${VAR:?message} or ${VAR?message}
    grafana = COMPOSE["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert grafana["secrets"] == ["grafana_admin_password"]
    assert COMPOSE["secrets"]["grafana_admin_password"] == {"environment": "GRAFANA_ADMIN_PASSWORD"}


def test_compose_reserves_a_gpu_and_wires_prometheus_and_grafana() -> None:
    services = COMPOSE["services"]
    denoise = services["denoise"]
    assert denoise["build"]["target"] == "gpu"
    (device,) = denoise["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "./models:/models:ro" in denoise["volumes"]
    # Spooled uploads (patient images) stay in memory; nothing else is written.
    assert denoise["read_only"] is True and any(t.split(":")[0] == "/tmp" for t in denoise["tmpfs"])
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{service} mounts {source}, which is missing"
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    target = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert target["static_configs"][0]["targets"] == ["denoise:8000"] and target["metrics_path"] == "/metrics"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool missing (apt-get install prometheus)")
        pytest.skip("promtool missing (apt-get install prometheus)")
    return path


@pytest.mark.parametrize(("command", "name"), [("config", "prometheus.yml"), ("rules", "rules.yml")])
def test_promtool_accepts_the_prometheus_files(command: str, name: str) -> None:
    result = subprocess.run(
        [promtool(), "check", command, str(DEPLOY / "prometheus" / name)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def expressions() -> list[str]:
    exprs = [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    exprs += [v["query"]["query"] for v in DASHBOARD["templating"]["list"]]
    return exprs


def test_dashboard_and_alerts_use_only_metrics_the_service_exports() -> None:
    exported = exported_metric_names()
    used = {name for expr in expressions() for name in re.findall(r"\bdenoise_[a-z_]+\b", expr)}
    assert used and used <= exported, sorted(used - exported)


def test_dashboard_covers_rate_latency_errors_batches_and_providers() -> None:
    exprs = "\n".join(expressions())
    for needed in (
        "rate(denoise_requests_total",
        "histogram_quantile(0.5, sum by (le, phase, modality) (rate(denoise_phase_seconds_bucket",
        "histogram_quantile(0.95, sum by (le, phase, modality) (rate(denoise_phase_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, phase, modality) (rate(denoise_phase_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, modality) (rate(denoise_request_seconds_bucket",
        'status=~"5.."',
        "denoise_batch_size_bucket",
        "denoise_model_execution_provider_info",
    ):
        assert needed in exprs, needed
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    uids = {t["datasource"]["uid"] for panel in DASHBOARD["panels"] for t in panel["targets"]}
    assert uids == {source["uid"]}
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "denoise.yml").read_text())["providers"]
    mounts = dict(v.split(":")[:2] for v in COMPOSE["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions per stage name, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(2), [f"FROM {match.group(1)}"])
        else:
            current.append(line)
    return stages


@pytest.mark.parametrize(
    ("target", "base", "extra"), [("gpu", "CUDA_IMAGE", "[gpu]"), ("cpu", "PYTHON_IMAGE", "[cpu]")]
)
def test_dockerfile_targets_are_non_root_with_a_healthcheck(target: str, base: str, extra: str) -> None:
    stages = dockerfile_stages()
    lines = stages[target]
    assert lines[0] == f"FROM ${{{base}}}"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    health = [line for line in lines if line.startswith("HEALTHCHECK")]
    assert len(health) == 1 and "/readyz" in health[0]
    assert any(line.startswith("RUN") and extra in line for line in lines)
    assert "EXPOSE 8000" in lines and lines[-1].startswith("CMD") and "app.server" in lines[-1]
    assert any(line.startswith("COPY") and line.endswith("models /models") for line in lines)
    text = (REPO / "Dockerfile").read_text()
    if target == "gpu":
        assert "ARG CUDA_IMAGE=nvidia/cuda:" in text and "cudnn-runtime" in text
        assert list(stages)[-1] == "gpu"  # a plain `docker build` gives the GPU image


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [line for line in (REPO / ".dockerignore").read_text().split("\n") if line and line[0] != "#"]
    assert lines[0] == "*" and {"!app/", "!models/", "!pyproject.toml", "!README.md"} <= set(lines)


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    """Each panel's query as a recording rule, checked by promtool's PromQL parser and type
    checker: a function given a scalar where it takes a vector fails here, as in Grafana."""
    substitutions = {"$__rate_interval": "5m", "$modality": ".*", "$phase": ".*"}
    rules = []
    for index, panel in enumerate(DASHBOARD["panels"]):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"an unknown dashboard variable in {expr}"
            rules.append({"record": f"dashboard:panel_{index}:{len(rules)}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
