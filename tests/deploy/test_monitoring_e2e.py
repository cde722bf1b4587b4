"""The monitoring path for real: a real Prometheus scrapes the real service (tiny models) on loopback, then every
dashboard panel's expression, the prometheus-adapter rule and the alert rules are evaluated through its HTTP API."""

from __future__ import annotations

import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from tests.deploy.conftest import ADAPTER_VALUES, DASHBOARD, PROM_DIR, tool
from tests.deploy.live import (
    dcgm_stub,
    free_port,
    http,
    png,
    running_prometheus,
    running_service,
    tiny_checkpoints,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)

# What the test sends: (task, body, content type) -> expected status.
TRAFFIC = (
    [("deblur", png(48, 40, i), "image/png", 200) for i in range(6)]
    + [("sr-x4", png(24, 20, i), "image/png", 200) for i in range(3)]
    + [("deblur", png(48, 40)[:80], "image/png", 422)]  # truncated PNG
    + [("sr-x4", b"GIF89a....", "image/gif", 415)]
)


def _send(base: str, item: tuple) -> tuple:
    """(status, headers, body, client-side seconds) of one request."""
    task, body, content_type, _ = item
    started = time.monotonic()
    answer = http("POST", f"{base}/restore/{task}", body, {"Content-Type": content_type}, timeout=60)
    return (*answer, time.monotonic() - started)


def _header(headers: dict, name: str) -> str:
    return next(v for k, v in headers.items() if k.lower() == name)


def _server_timing_s(headers: dict) -> float:
    """The sum of the stages in `Server-Timing` (decode, queue, inference, encode): a lower bound of the
    server's request duration."""
    return sum(float(p.split(";dur=")[1]) for p in _header(headers, "server-timing").split(",")) / 1000


def _total(prom) -> float:
    result = prom.query("sum(diffir_requests_total)")
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitoring")
    checkpoints = tiny_checkpoints(tmp / "ckpt")
    metrics_port = free_port()  # /metrics on its own port, as compose and k8s configure it (DIFFIR_METRICS_PORT)
    with (
        running_service(tmp, checkpoints, DIFFIR_METRICS_PORT=str(metrics_port)) as (service, base),
        dcgm_stub() as dcgm,
    ):
        # The compose/k8s scrape config, pointed at loopback; pod/namespace labels as the ServiceMonitor adds them.
        shutil.copy(PROM_DIR / "alerts.yml", tmp / "alerts.yml")
        config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
        for job in config["scrape_configs"]:
            if job["job_name"] == "diffir-serve":
                job["static_configs"] = [
                    {"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"namespace": "diffir", "pod": "diffir-0"}}
                ]
        # The GPU setup's file_sd target file (deploy/prometheus/gpu-targets), pointed at the DCGM stub.
        (tmp / "gpu-targets").mkdir()
        (tmp / "gpu-targets" / "dcgm.yml").write_text(yaml.safe_dump([{"targets": [dcgm]}]))
        config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] != "prometheus"]
        with running_prometheus(tmp, yaml.safe_dump(config), tool("prometheus")) as prom:

            def targets_up():
                active = prom.api("targets")["activeTargets"]
                return len(active) == 2 and all(t["health"] == "up" for t in active)

            wait_for(targets_up, 30, "both scrape targets to be up")
            # Two waves: counter series appear with the first (Prometheus takes a new series' first value as its
            # start), the second makes every rate() non-zero, as in steady traffic.
            results = []
            for wave in (1, 2):
                with ThreadPoolExecutor(4) as pool:
                    results += list(pool.map(lambda item: _send(base, item), TRAFFIC))
                wait_for(
                    lambda wave=wave: _total(prom) >= wave * len(TRAFFIC), 30, "the requests to show up in Prometheus"
                )
                time.sleep(2.5)  # a few more scrapes: rate() needs two samples per window
            yield {"prom": prom, "results": results, "service": service}


def test_traffic_was_answered(stack):
    statuses = [status for status, *_ in stack["results"]]
    assert statuses == [expected for *_, expected in TRAFFIC] * 2, stack["service"].logs()[-4000:]


def test_request_counts_match_what_was_sent(stack):
    got = {
        (r["metric"]["task"], r["metric"]["code"]): float(r["value"][1])
        for r in stack["prom"].query('diffir_requests_total{job="diffir-serve"}')
    }
    expected: dict[tuple[str, str], float] = {}
    for task, *_, status in TRAFFIC:
        expected[(task, str(status))] = expected.get((task, str(status)), 0) + 2
    assert got == expected
    # Every known reason is exported from start-up at 0; the traffic above rejects for exactly two.
    reasons = {r["metric"]["reason"] for r in stack["prom"].query("diffir_rejected_total > 0")}
    assert len(reasons) == 2, reasons


def _panel_queries():
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace('"$task"', '".*"')
            yield pytest.param(panel["title"], expr, id=f"{panel['id']}-{target['refId']}")


@pytest.mark.parametrize(("title", "expr"), list(_panel_queries()))
def test_dashboard_panel_returns_data(stack, title, expr):
    result = stack["prom"].query(expr)
    assert result, f"panel {title!r} returns no data: {expr}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"panel {title!r}: only NaN/Inf: {result}"


def test_latency_and_batching_panels_show_the_traffic(stack):
    """The panels' numbers against what the client measured on the same requests: p99 lies in the
    histogram bucket of the slowest request (between the slowest server-side stage sum and the slowest
    client-side latency), and the mean batch size equals the one the `X-Batch-Size` headers imply."""
    prom, results = stack["prom"], stack["results"]
    edges = sorted({float(r["metric"]["le"]) for r in prom.query("diffir_request_duration_seconds_bucket")})
    # the scraped totals (every request of the module; rate() windows lose the first wave, see `stack`)
    p99 = float(
        prom.query("histogram_quantile(0.99, sum by (le) (diffir_request_duration_seconds_bucket))")[0]["value"][1]
    )
    slowest_client = max(seconds for *_, seconds in results)
    slowest_server = max(_server_timing_s(headers) for status, headers, _, _ in results if status == 200)
    lower = max((e for e in edges if e < slowest_server), default=0.0)
    upper = min(e for e in edges if e >= slowest_client)
    assert lower <= p99 <= upper, (p99, slowest_server, slowest_client, edges)
    sizes = [int(_header(headers, "x-batch-size")) for status, headers, _, _ in results if status == 200]
    expected_mean = len(sizes) / sum(1 / k for k in sizes)  # a batch of k answers k requests
    mean_batch = prom.query("sum(diffir_batch_size_sum) / sum(diffir_batch_size_count)")
    assert float(mean_batch[0]["value"][1]) == pytest.approx(expected_mean, rel=1e-3), (sizes, mean_batch)
    info = prom.query("diffir_model_info")
    assert sorted(r["metric"]["task"] for r in info) == ["deblur", "sr-x4"]
    assert {r["metric"]["backend"] for r in info} <= {"torch", "torchscript", "onnxruntime"}


def test_prometheus_adapter_rule_serves_queue_depth_per_pod(stack):
    """The adapter's metricsQuery, rendered as prometheus-adapter renders it for the HPA's request."""
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    series = stack["prom"].api("series", **{"match[]": rule["seriesQuery"]})
    assert series, "the adapter's seriesQuery finds nothing"
    name = series[0]["__name__"]
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", name)
        .replace("<<.LabelMatchers>>", 'namespace="diffir",pod=~"diffir-0"')
        .replace("<<.GroupBy>>", "pod")
    )
    result = stack["prom"].query(query)
    assert [r["metric"] for r in result] == [{"pod": "diffir-0"}]
    assert float(result[0]["value"][1]) >= 0


def test_alert_rules_load_and_evaluate(stack):
    groups = stack["prom"].api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    expected = {r["alert"] for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert {r["name"] for r in rules} == expected
    wait_for(
        lambda: all(
            r.get("lastEvaluation", "").startswith("20") for r in stack["prom"].api("rules")["groups"][0]["rules"]
        ),
        10,
        "rule evaluation",
    )
    for rule in stack["prom"].api("rules")["groups"][0]["rules"]:
        assert rule["health"] == "ok", rule
    # A healthy service raises no alert (DiffirNotReady, DiffirTargetDown, ... stay inactive).
    assert [a for a in stack["prom"].api("alerts")["alerts"] if a["labels"]["alertname"].startswith("Diffir")] == []
