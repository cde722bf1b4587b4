"""Prometheus config and alert rules checked by promtool (Debian `prometheus`), alerts unit-tested."""

from __future__ import annotations

import shutil

import yaml

from tests.deploy.conftest import PROM_DIR, promql_grouping_labels, promql_selectors, run, sample_catalogue, tool


def test_promtool_check_config():
    proc = run([tool("promtool"), "check", "config", str(PROM_DIR / "prometheus.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout and "rules found" in proc.stdout


def test_promtool_check_rules():
    proc = run([tool("promtool"), "check", "rules", str(PROM_DIR / "alerts.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_alert_unit_tests():
    proc = run([tool("promtool"), "test", "rules", "alerts.test.yml"], cwd=PROM_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alert_unit_tests_can_fail(tmp_path):
    """Negative control: a wrong expectation makes promtool fail."""
    shutil.copy(PROM_DIR / "alerts.yml", tmp_path / "alerts.yml")
    text = (PROM_DIR / "alerts.test.yml").read_text().replace("40 requests queued", "41 requests queued")
    (tmp_path / "alerts.test.yml").write_text(text)
    proc = run([tool("promtool"), "test", "rules", "alerts.test.yml"], cwd=tmp_path)
    assert proc.returncode != 0


def test_every_alert_uses_real_metric_names_and_labels():
    catalogue = sample_catalogue()
    groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"]]
    assert len(alerts) >= 6
    for rule in alerts:
        selectors = promql_selectors(rule["expr"])
        assert selectors, rule["alert"]
        available = set()
        for name, labels in selectors:
            assert name in catalogue, f"{rule['alert']}: {name} is not exported"
            metric = catalogue[name]
            allowed = metric.sample_labels(name) | {"job", "instance"}
            assert labels <= allowed, f"{rule['alert']}: {name} has no label {labels - allowed}"
            available |= allowed
        assert promql_grouping_labels(rule["expr"]) <= available | {"le"}, rule["alert"]
