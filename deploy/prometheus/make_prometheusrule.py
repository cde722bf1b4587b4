"""Generate k8s/components/monitoring/prometheusrule.yaml from deploy/prometheus/alerts.yml.

The alert rules have one source, the Prometheus rule file that docker compose loads; the Prometheus Operator
needs the same groups wrapped in a PrometheusRule object, which kustomize cannot build from a plain rule file.
tests/deploy checks that the committed object is what this script makes. Run:
`.venv/bin/python deploy/prometheus/make_prometheusrule.py`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
OUT = REPO / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
# kube-prometheus-stack selects PrometheusRules (like ServiceMonitors) by `release: <Helm release name>`;
# k8s/overlays/monitoring shows how to set another value.
RELEASE_LABEL = {"release": "kube-prometheus-stack"}
PART_OF = {"app.kubernetes.io/name": "diffir-serve", "app.kubernetes.io/part-of": "diffir"}
HEADER = (
    "# Generated from deploy/prometheus/alerts.yml by deploy/prometheus/make_prometheusrule.py: edit the rule file\n"
    "# and re-run the script. The Prometheus Operator loads these alerts into the Prometheus that selects the label.\n"
)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL expressions) as `|` blocks, as in the rule file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def render() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "diffir-serve", "labels": {**PART_OF, **RELEASE_LABEL}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(rule, Dumper=_BlockDumper, sort_keys=False, width=120)


def main() -> None:
    OUT.write_text(render())
    logging.getLogger(__name__).info("wrote %s", OUT)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
