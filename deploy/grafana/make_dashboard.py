"""Generate deploy/grafana/dashboards/diffir.json, the provisioned DiffIR dashboard.

Every expression uses the metric names the service exports (service/metrics.py) and NVIDIA DCGM exporter
names for the GPU panels; tests/deploy checks both and evaluates every expression against a real
Prometheus scraping a real service. Run: `.venv/bin/python deploy/grafana/make_dashboard.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "dashboards" / "diffir.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RI = "$__rate_interval"
T = 'task=~"$task"'


def _quantile(q: float, metric: str, by: str = "task") -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{T}}}[{RI}])))"


def _target(ref: str, expr: str, legend: str, **extra: object) -> dict:
    return {"refId": ref, "datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "range": True, **extra}


def _ratio(selector: str) -> str:
    # `or ... * 0` keeps the series at 0 when no request failed (instead of "no data").
    total = f"sum by (task) (rate(diffir_requests_total{{{T}}}[{RI}]))"
    failed = f'sum by (task) (rate(diffir_requests_total{{{T}, code=~"{selector}"}}[{RI}]))'
    return f"({failed} / {total}) or ({total} * 0)"


def _or_zero(expr: str) -> str:
    # Counters whose label sets appear only on the first event: show 0 per task instead of "no data".
    return f"({expr}) or (sum by (task) (diffir_queue_depth{{{T}}}) * 0)"


def panels() -> list[dict]:
    """(title, kind, unit, width, targets, extra options) in layout order; rows of 24 grid units."""
    spec: list[tuple[str, str, str, int, list[dict], dict]] = [
        ("Traffic", "row", "", 24, [], {}),
        (
            "Requests/s by task and code",
            "timeseries",
            "reqps",
            12,
            [_target("A", f"sum by (task, code) (rate(diffir_requests_total{{{T}}}[{RI}]))", "{{task}} {{code}}")],
            {"stack": True},
        ),
        (
            "Error ratio",
            "timeseries",
            "percentunit",
            6,
            [
                _target("A", _ratio("5.."), "{{task}} 5xx"),
                _target("B", _ratio("4.."), "{{task}} 4xx"),
            ],
            {},
        ),
        (
            "Rejections by reason",
            "timeseries",
            "reqps",
            6,
            [
                _target(
                    "A",
                    _or_zero(f"sum by (task, reason) (rate(diffir_rejected_total{{{T}}}[{RI}]))"),
                    "{{task}} {{reason}}",
                )
            ],
            {"stack": True},
        ),
        ("Latency", "row", "", 24, [], {}),
        (
            "Request latency p50 / p95 / p99",
            "timeseries",
            "s",
            8,
            [
                _target("A", _quantile(0.5, "diffir_request_duration_seconds"), "{{task}} p50"),
                _target("B", _quantile(0.95, "diffir_request_duration_seconds"), "{{task}} p95"),
                _target("C", _quantile(0.99, "diffir_request_duration_seconds"), "{{task}} p99"),
            ],
            {},
        ),
        (
            "Queue wait p95",
            "timeseries",
            "s",
            8,
            [_target("A", _quantile(0.95, "diffir_queue_wait_seconds"), "{{task}} p95")],
            {},
        ),
        (
            "Inference time per batch by backend",
            "timeseries",
            "s",
            8,
            [
                _target(
                    "A",
                    _quantile(0.95, "diffir_inference_duration_seconds", "task, backend"),
                    "{{task}} {{backend}} p95",
                ),
                _target(
                    "B",
                    f"sum by (task, backend) (rate(diffir_inference_duration_seconds_sum{{{T}}}[{RI}]))"
                    f" / sum by (task, backend) (rate(diffir_inference_duration_seconds_count{{{T}}}[{RI}]))",
                    "{{task}} {{backend}} mean",
                ),
            ],
            {},
        ),
        ("Queue and batching", "row", "", 24, [], {}),
        (
            "Queue depth",
            "timeseries",
            "short",
            8,
            [_target("A", f"sum by (task) (diffir_queue_depth{{{T}}})", "{{task}}")],
            {},
        ),
        (
            "Batch size distribution",
            "heatmap",
            "short",
            8,
            [
                _target(
                    "A",
                    f"sum by (le) (increase(diffir_batch_size_bucket{{{T}}}[{RI}]))",
                    "{{le}}",
                    format="heatmap",
                )
            ],
            {},
        ),
        (
            "Mean batch size",
            "timeseries",
            "short",
            8,
            [
                _target(
                    "A",
                    f"sum by (task) (rate(diffir_batch_size_sum{{{T}}}[{RI}]))"
                    f" / sum by (task) (rate(diffir_batch_size_count{{{T}}}[{RI}]))",
                    "{{task}}",
                )
            ],
            {},
        ),
        ("GPU (DCGM exporter)", "row", "", 24, [], {}),
        (
            "GPU utilisation",
            "timeseries",
            "percent",
            12,
            [_target("A", "avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} GPU {{gpu}}")],
            {},
        ),
        (
            "GPU memory used",
            "timeseries",
            "decmbytes",
            12,
            [
                _target("A", "sum by (Hostname, gpu) (DCGM_FI_DEV_FB_USED)", "{{Hostname}} GPU {{gpu}} used"),
                _target(
                    "B",
                    "sum by (Hostname, gpu) (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
                    "{{Hostname}} GPU {{gpu}} total",
                ),
            ],
            {},
        ),
        ("Service", "row", "", 24, [], {}),
        ("Ready instances", "stat", "short", 4, [_target("A", "sum(diffir_ready)", "ready")], {}),
        (
            "Input size p95",
            "timeseries",
            "short",
            10,
            [_target("A", _quantile(0.95, "diffir_input_pixels"), "{{task}} pixels p95")],
            {},
        ),
        (
            "Client disconnects",
            "timeseries",
            "reqps",
            10,
            [_target("A", _or_zero(f"sum by (task) (rate(diffir_disconnected_total{{{T}}}[{RI}]))"), "{{task}}")],
            {},
        ),
        (
            "Models",
            "table",
            "",
            24,
            [
                _target(
                    "A",
                    "max by (task, variant, backend, provider, version) (diffir_model_info)",
                    "",
                    format="table",
                    instant=True,
                    range=False,
                )
            ],
            {},
        ),
    ]
    out: list[dict] = []
    x = y = 0
    row_height = 8
    for pid, (title, kind, unit, width, targets, extra) in enumerate(spec, start=1):
        height = 1 if kind == "row" else row_height
        if kind == "row" or x + width > 24:
            x, y = 0, y + (row_height if x else 0)
        panel: dict = {"id": pid, "type": kind, "title": title, "gridPos": {"x": x, "y": y, "w": width, "h": height}}
        if kind == "row":
            panel["collapsed"] = False
            panel["panels"] = []
            y += 1
            out.append(panel)
            continue
        panel["datasource"] = DATASOURCE
        panel["targets"] = targets
        defaults: dict = {"unit": unit} if unit else {}
        if extra.get("stack"):
            defaults["custom"] = {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 20}
        panel["fieldConfig"] = {"defaults": defaults, "overrides": []}
        if kind == "heatmap":
            panel["options"] = {"calculate": False, "yAxis": {"unit": "short"}, "cellGap": 1}
        if kind == "timeseries":
            panel["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]}}
        out.append(panel)
        x += width
        if x >= 24:
            x, y = 0, y + height
    return out


def dashboard() -> dict:
    return {
        "uid": "diffir-serve",
        "title": "DiffIR service",
        "description": "Traffic, errors, latency, queueing, batching and GPU of the DiffIR restoration service.",
        "tags": ["diffir", "inference"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "task",
                    "label": "Task",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {"query": "label_values(diffir_requests_total, task)", "refId": "task"},
                    "refresh": 2,
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "sort": 1,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
