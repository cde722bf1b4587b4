"""The Grafana dashboard JSON: generated, well-formed, every query on metrics and labels the service exports."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.deploy.conftest import DASHBOARD, REPO, promql_grouping_labels, promql_selectors, sample_catalogue

REQUIRED_PANELS = {
    "Requests/s by task and code": {"diffir_requests_total"},
    "Error ratio": {"diffir_requests_total"},
    "Request latency p50 / p95 / p99": {"diffir_request_duration_seconds_bucket"},
    "Queue wait p95": {"diffir_queue_wait_seconds_bucket"},
    "Queue depth": {"diffir_queue_depth"},
    "Batch size distribution": {"diffir_batch_size_bucket"},
    "Mean batch size": {"diffir_batch_size_sum", "diffir_batch_size_count"},
    "Rejections by reason": {"diffir_rejected_total"},
    "Inference time per batch by backend": {"diffir_inference_duration_seconds_bucket"},
    "GPU utilisation": {"DCGM_FI_DEV_GPU_UTIL"},
    "GPU memory used": {"DCGM_FI_DEV_FB_USED"},
}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_targets(dashboard: dict) -> list[tuple[dict, dict]]:
    return [(p, t) for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]


def test_committed_json_is_what_the_generator_makes():
    spec = importlib.util.spec_from_file_location("make_dashboard", REPO / "deploy" / "grafana" / "make_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), "run deploy/grafana/make_dashboard.py"


def test_layout_is_well_formed():
    dashboard = load()
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    occupied = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))
    (task_var,) = dashboard["templating"]["list"]
    assert task_var["name"] == "task" and "diffir_requests_total" in task_var["query"]["query"]


def test_required_panels_use_the_required_metrics():
    dashboard = load()
    by_title = {p["title"]: p for p in dashboard["panels"]}
    for title, metrics in REQUIRED_PANELS.items():
        assert title in by_title, f"missing panel {title}"
        used = {name for t in by_title[title]["targets"] for name, _ in promql_selectors(t["expr"])}
        assert metrics <= used, f"{title}: {metrics - used} not queried"
    latency = " ".join(t["expr"] for t in by_title["Request latency p50 / p95 / p99"]["targets"])
    assert all(
        q in latency for q in ("histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,")
    )
    backend = " ".join(t["expr"] for t in by_title["Inference time per batch by backend"]["targets"])
    assert "backend" in promql_grouping_labels(backend)


def test_every_query_uses_exported_metrics_and_labels():
    """Against the metrics service.metrics.Metrics really registers (plus DCGM exporter names for GPU panels)."""
    catalogue = sample_catalogue()
    for panel, target in panel_targets(load()):
        selectors = promql_selectors(target["expr"])
        assert selectors, f"{panel['title']}: no metric in {target['expr']}"
        available: set[str] = set()
        for name, labels in selectors:
            assert name in catalogue, f"{panel['title']}: {name} is not exported by the service"
            allowed = catalogue[name].sample_labels(name)
            assert labels <= allowed, f"{panel['title']}: {name} has no label(s) {labels - allowed}"
            available |= allowed
            if name.endswith("_bucket"):
                assert "histogram_quantile" in target["expr"] or target.get("format") == "heatmap"
            if catalogue[name].type == "counter":
                assert "rate(" in target["expr"] or "increase(" in target["expr"], f"{panel['title']}: raw counter"
        assert promql_grouping_labels(target["expr"]) <= available, panel["title"]


def _dropped(ours, theirs, path: str = "") -> list[str]:
    """Paths of `ours` that the round trip through Grafana's models lost or changed (added defaults are fine)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [
            p
            for k, v in ours.items()
            for p in ([f"{path}/{k}"] if k not in theirs else _dropped(v, theirs[k], f"{path}/{k}"))
        ]
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [p for i, (a, b) in enumerate(zip(ours, theirs)) for p in _dropped(a, b, f"{path}[{i}]")]
    return [] if ours == theirs else [path]


def _round_trip(dashboard: dict) -> dict:
    pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk needs Python 3.11+")
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()  # panel options and Prometheus queries by plugin type

    def encode(obj):
        return obj.to_json() if hasattr(obj, "to_json") else str(obj)

    return json.loads(json.dumps(Dashboard.from_json(dashboard).to_json(), default=encode))


def test_dashboard_fits_grafanas_schema():
    """Read with the models Grafana generates from its dashboard schema (grafana-foundation-sdk): every field we
    wrote survives the round trip, so none is unknown, misplaced or of the wrong shape."""
    dashboard = load()
    assert _dropped(dashboard, _round_trip(dashboard)) == []
    bad = json.loads(json.dumps(dashboard))
    bad["panels"][1]["gridpos"] = bad["panels"][1].pop("gridPos")  # negative control: a misspelt field
    bad["panels"][1]["options"]["legend"]["placment"] = "bottom"
    assert set(_dropped(bad, _round_trip(bad))) == {"/panels[1]/gridpos", "/panels[1]/options/legend/placment"}
