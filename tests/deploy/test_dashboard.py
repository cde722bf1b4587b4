"""The Grafana dashboard JSON: generated, well-formed, every query on metrics and labels the service exports."""

from __future__ import annotations

import importlib.util
import json

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
    assert task_var["name"] == "task" and "diffir_requests_total" in task_var["definition"]


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
