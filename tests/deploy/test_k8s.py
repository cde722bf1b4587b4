"""Kubernetes manifests: rendered by the real kustomize, validated strictly, and consistent with the service."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.conftest import (
    ADAPTER_VALUES,
    K8S,
    KUSTOMIZATIONS,
    REPO,
    load_yaml_docs,
    run,
    service_metrics,
    tool,
)

K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest and newest schema we claim to support
CRD_KINDS = {"ServiceMonitor"}  # not in the Kubernetes schemas: checked against the operator's CRD models below


def _raw_manifests() -> list:
    """Every plain manifest file in k8s/ (kustomization files and JSON patches are not resources)."""
    files = []
    for path in sorted(K8S.rglob("*.yaml")):
        docs = load_yaml_docs(path.read_text())
        if path.name == "kustomization.yaml" or all(isinstance(d, list) for d in docs):
            continue
        files.append(path)
    return files


def _validate(path, version: str) -> tuple[int, str]:
    proc = run([tool("kubernetes-validate"), "--strict", "-k", version, str(path)], timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def _by_kind(resources: list[dict]) -> dict[str, dict]:
    return {r["kind"]: r for r in resources}


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_every_kustomization_renders(rendered):
    assert set(rendered) == {"base", "cpu"}
    for name, resources in rendered.items():
        kinds = sorted(r["kind"] for r in resources)
        assert kinds == sorted(
            [
                "ConfigMap",
                "Deployment",
                "HorizontalPodAutoscaler",
                "Namespace",
                "PodDisruptionBudget",
                "Service",
                "ServiceMonitor",
            ]
        ), name
        assert all(r["metadata"].get("namespace") == "diffir" for r in resources if r["kind"] != "Namespace")


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_fallback_renderer_matches_kubectl_kustomize(name):
    """kustomize_lite (used where kubectl is missing) renders exactly what the real kustomize renders."""
    import shutil

    from tests.deploy.kustomize_lite import render

    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl here: the manifests were rendered by kustomize_lite, nothing to compare with")
    proc = run(["kubectl", "kustomize", str(KUSTOMIZATIONS[name])])
    assert proc.returncode == 0, proc.stderr

    def key(doc: dict) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(render(KUSTOMIZATIONS[name]), key=key) == sorted(load_yaml_docs(proc.stdout), key=key)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_strict_on_every_manifest(rendered, tmp_path, version):
    targets = list(_raw_manifests())
    for name, resources in rendered.items():
        out = tmp_path / f"rendered-{name}.yaml"
        out.write_text(yaml.safe_dump_all(resources, sort_keys=False))
        targets.append(out)
    assert len(targets) >= 8
    for path in targets:
        rc, output = _validate(path, version)
        assert rc == 0, output
        assert "ERROR" not in output, output
        for resource in load_yaml_docs(path.read_text()):
            kn = f"{resource['kind'].lower()}/{resource['metadata']['name']}"
            if resource["kind"] in CRD_KINDS:
                assert f"Couldn't find schema for kind {resource['kind']}" in output
            else:
                assert f"passed for resource {kn} against version" in output, f"{path}: {kn} not validated\n{output}"


def test_strict_validation_rejects_unknown_fields(rendered, tmp_path):
    """Negative control: the validator really checks (a misspelt probe field and a wrong type fail)."""
    deployment = _by_kind(rendered["base"])["Deployment"]
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    _container(bad)["readinesProbe"] = _container(bad)["readinessProbe"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    rc, output = _validate(path, "1.37.0")
    assert rc != 0 and "readinesProbe" in output, output
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["replicas"] = "two"
    path.write_text(yaml.safe_dump(bad))
    rc, output = _validate(path, "1.37.0")
    assert rc != 0, output


def test_servicemonitor_matches_the_operator_crd(rendered):
    """Validated with the models generated from the Prometheus Operator CRD: types and patterns are checked, and
    a round trip that drops nothing proves there is no unknown field."""
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    for resources in rendered.values():
        doc = _by_kind(resources)["ServiceMonitor"]
        model = ServiceMonitor.model_validate(doc)
        assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValueError):
        ServiceMonitor.model_validate(bad)
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["endpoints"][0]["scrape_interval"] = "15s"
    assert ServiceMonitor.model_validate(bad).model_dump(by_alias=True, exclude_unset=True, mode="json") != bad


def _env(resources: list[dict]) -> dict[str, str]:
    return dict(_by_kind(resources)["ConfigMap"]["data"])


@pytest.mark.parametrize("overlay", ["base", "cpu"])
def test_configmap_is_valid_service_settings(rendered, overlay, monkeypatch):
    """The ConfigMap's variables are real settings with valid values (checked by the service's own Settings)."""
    from service.settings import Settings

    env = _env(rendered[overlay])
    known = {f"DIFFIR_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, f"unknown settings: {set(env) - known}"
    for key in list(__import__("os").environ):
        if key.startswith("DIFFIR_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert settings.device == ("cuda" if overlay == "base" else "cpu")
    assert settings.metrics_port is None, "the probes, Service and ServiceMonitor assume /metrics on the main port"


@pytest.mark.parametrize("overlay", ["base", "cpu"])
def test_deployment_contract(rendered, overlay):
    res = _by_kind(rendered[overlay])
    dep = res["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    env = _env(rendered[overlay])
    port = int(env["DIFFIR_PORT"])
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": port}

    # Probes: start-up and readiness on /readyz (503 until warm and while draining), liveness on /healthz.
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup_budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert startup_budget >= 300, "model load + warm-up of every task needs minutes on a cold node"
    # Liveness must not kill a draining pod: it only starts after start-up and checks /healthz.
    assert c["livenessProbe"]["failureThreshold"] * c["livenessProbe"]["periodSeconds"] >= 20

    # Shutdown: preStop sleep, then SIGTERM and the service's drain must fit in the grace period.
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep_s = int(pre_stop[1])
    drain_s = float(env["DIFFIR_DRAIN_SECONDS"])
    grace = pod["terminationGracePeriodSeconds"]
    assert 2 <= sleep_s <= 15
    assert grace >= sleep_s + drain_s + 5, (grace, sleep_s, drain_s)
    assert grace <= sleep_s + drain_s + 30, "grace far beyond the drain only delays rollouts"
    assert sleep_s * 1 < c["readinessProbe"]["periodSeconds"] * c["readinessProbe"]["failureThreshold"] + 10

    # Security: non-root, read-only root, no privilege escalation, a writable /tmp.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 1000
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]

    # Settings from the ConfigMap, the optional API key from a Secret.
    assert c["envFrom"] == [{"configMapRef": {"name": res["ConfigMap"]["metadata"]["name"]}}]
    (api_key,) = [e for e in c["env"] if e["name"] == "DIFFIR_API_KEY"]
    assert api_key["valueFrom"]["secretKeyRef"]["optional"] is True
    example = load_yaml_docs((K8S / "base" / "secret.example.yaml").read_text())[0]
    assert example["metadata"]["name"] == api_key["valueFrom"]["secretKeyRef"]["name"]
    assert api_key["valueFrom"]["secretKeyRef"]["key"] in example["stringData"]

    # Resources: GPU in the base, none in the CPU overlay; CPU/memory requests and limits everywhere.
    resources = c["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])
    if overlay == "base":
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert c["image"].endswith("-cuda")
    else:
        assert not any("gpu" in key for kind in ("requests", "limits") for key in resources[kind])
        assert "tolerations" not in pod
        assert c["image"].endswith("-cpu")


@pytest.mark.parametrize("overlay", ["base", "cpu"])
def test_selectors_and_autoscaling_fit_together(rendered, overlay):
    res = _by_kind(rendered[overlay])
    dep, svc, pdb, hpa, sm = (
        res[k] for k in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor")
    )
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (
        dep["spec"]["selector"]["matchLabels"],
        svc["spec"]["selector"],
        pdb["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert all(e["path"] == "/metrics" for e in sm["spec"]["endpoints"])
    # The operator names the job after the Service: the compose scrape job and the alerts use the same name.
    assert "jobLabel" not in sm["spec"]
    compose_jobs = {
        j["job_name"] for j in yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"]
    }
    assert svc["metadata"]["name"] in compose_jobs
    assert f'job="{svc["metadata"]["name"]}"' in (REPO / "deploy/prometheus/alerts.yml").read_text()
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }

    # The HPA's Pods metric is the one prometheus-adapter serves, made from a real gauge of the service.
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    series = re.match(r"([a-z_]+)\{", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series)
    assert service_metrics()[series].type == "gauge"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_readme_documents_the_apply():
    readme = (REPO / "README.md").read_text()
    assert "## Deployment" in readme
    for needle in ("kubectl apply -k k8s/base", "kubectl apply -k k8s/overlays/cpu", "docker compose up"):
        assert needle in readme
