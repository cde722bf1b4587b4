"""Kubernetes manifests: rendered by the real kustomize, validated strictly, and consistent with the service."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest
import yaml

from tests.deploy.conftest import (
    ADAPTER_VALUES,
    CPU_KUSTOMIZATIONS,
    DASHBOARD,
    K8S,
    KUSTOMIZATIONS,
    MONITORING_KUSTOMIZATIONS,
    OVERLAYS,
    PROM_DIR,
    REPO,
    kustomize_build,
    load_yaml_docs,
    run,
    service_metrics,
    tool,
)

K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest and newest schema we claim to support
# Not in the Kubernetes schemas: checked against the Prometheus Operator's CRD models below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
PLAIN_KINDS = ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Namespace", "PodDisruptionBudget", "Service"]


def _raw_manifests() -> list:
    """Every plain manifest file in k8s/ (kustomization files and JSON patches are not resources)."""
    files = []
    for path in sorted(K8S.rglob("*.yaml")):
        docs = load_yaml_docs(path.read_text())
        if path.name == "kustomization.yaml" or all(isinstance(d, list) for d in docs):
            continue
        files.append(path)
    return files


def _validate(*paths, version: str) -> tuple[int, str]:
    proc = run([tool("kubernetes-validate"), "--strict", "-k", version, *map(str, paths)], timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def _by_kind(resources: list[dict]) -> dict[str, dict]:
    return {r["kind"]: r for r in resources}


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _configmap(resources: list[dict]) -> dict:
    (config,) = [r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith("diffir-config")]
    return config


def _env(resources: list[dict]) -> dict[str, str]:
    return dict(_configmap(resources)["data"])


def _settings(env: dict[str, str], monkeypatch):
    """The service's own Settings, read from exactly these variables."""
    from service.settings import Settings

    for key in list(os.environ):
        if key.startswith("DIFFIR_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def render_with(tmp_path, resources: list[str], components: list[str] = (), extra: str = "") -> list[dict]:
    """A throw-away overlay (what a user writes) around our kustomizations, rendered by kustomize."""
    rel = [os.path.relpath(K8S / r, tmp_path) for r in resources]
    comps = [os.path.relpath(K8S / c, tmp_path) for c in components]
    text = f"resources: {rel}\ncomponents: {comps}\n{extra}"
    (tmp_path / "kustomization.yaml").write_text(text)
    return kustomize_build(tmp_path)


def test_every_kustomization_renders(rendered):
    assert set(rendered) == {"base", "cpu", "monitoring", "cpu-monitoring"}
    for name, resources in rendered.items():
        kinds = sorted(r["kind"] for r in resources)
        expected = PLAIN_KINDS + (["ConfigMap", "PrometheusRule", "ServiceMonitor"] if "monitoring" in name else [])
        assert kinds == sorted(expected), name
        assert all(r["metadata"].get("namespace") == "diffir" for r in resources if r["kind"] != "Namespace")


@pytest.mark.parametrize("name", ["base", "cpu"])
def test_plain_kustomizations_need_no_crds(rendered, name):
    """`kubectl apply -k k8s/base` works on a cluster without the Prometheus Operator: only built-in API groups."""
    builtin = {"v1", "apps/v1", "autoscaling/v2", "policy/v1"}
    assert {r["apiVersion"] for r in rendered[name]} <= builtin
    assert not {r["kind"] for r in rendered[name]} & CRD_KINDS


def test_kustomize_really_renders(tmp_path):
    """Negative control: a kustomization naming a missing file fails to render (no renderer of our own fakes it)."""
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    proc = run([tool("kubectl"), "kustomize", str(tmp_path)])
    assert proc.returncode != 0 and "missing.yaml" in proc.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_strict_on_every_manifest(rendered, tmp_path, version):
    targets = list(_raw_manifests())
    for name, resources in rendered.items():
        out = tmp_path / f"rendered-{name}.yaml"
        out.write_text(yaml.safe_dump_all(resources, sort_keys=False))
        targets.append(out)
    assert len(targets) >= 12
    rc, output = _validate(*targets, version=version)  # one run: the validator's start-up dominates
    assert rc == 0, output
    assert "ERROR" not in output, output
    for path in targets:
        for resource in load_yaml_docs(path.read_text()):
            kn = f"{resource['kind'].lower()}/{resource['metadata']['name']}"
            if resource["kind"] in CRD_KINDS:
                assert f"{path} Couldn't find schema for kind {resource['kind']}" in output
            else:
                assert f"{path} passed for resource {kn} against version" in output, f"{kn} not validated\n{output}"


def test_strict_validation_rejects_unknown_fields(rendered, tmp_path):
    """Negative control: the validator really checks (a misspelt probe field and a wrong type fail)."""
    deployment = _by_kind(rendered["base"])["Deployment"]
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    _container(bad)["readinesProbe"] = _container(bad)["readinessProbe"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    rc, output = _validate(path, version="1.37.0")
    assert rc != 0 and "readinesProbe" in output, output
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["replicas"] = "two"
    path.write_text(yaml.safe_dump(bad))
    rc, output = _validate(path, version="1.37.0")
    assert rc != 0, output


def _round_trips(model, doc: dict) -> bool:
    return model.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json") == doc


@pytest.mark.parametrize("name", sorted(MONITORING_KUSTOMIZATIONS))
def test_operator_objects_match_the_crds(rendered, name):
    """Validated with the models generated from the Prometheus Operator CRDs: types and patterns are checked, and
    a round trip that drops nothing proves there is no unknown field."""
    from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

    res = _by_kind(rendered[name])
    assert _round_trips(ServiceMonitor, res["ServiceMonitor"])
    assert _round_trips(PrometheusRule, res["PrometheusRule"])
    bad = yaml.safe_load(yaml.safe_dump(res["ServiceMonitor"]))
    bad["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValueError):
        ServiceMonitor.model_validate(bad)
    bad = yaml.safe_load(yaml.safe_dump(res["ServiceMonitor"]))
    bad["spec"]["endpoints"][0]["scrape_interval"] = "15s"
    assert not _round_trips(ServiceMonitor, bad)
    bad = yaml.safe_load(yaml.safe_dump(res["PrometheusRule"]))
    bad["spec"]["groups"][0]["rules"][0]["for"] = "two minutes"
    with pytest.raises(ValueError):
        PrometheusRule.model_validate(bad)


@pytest.mark.parametrize("name", sorted(MONITORING_KUSTOMIZATIONS))
def test_operator_objects_carry_the_release_label(rendered, name):
    """kube-prometheus-stack's Prometheus selects ServiceMonitors and PrometheusRules by `release: <release>`."""
    res = _by_kind(rendered[name])
    for kind in CRD_KINDS:
        assert res[kind]["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind


def test_release_label_is_configurable(tmp_path):
    """The documented way to select by another release name: one patch in an overlay changes both objects."""
    patch = (REPO / "k8s" / "overlays" / "monitoring" / "kustomization.yaml").read_text().split("patches:", 1)[1]
    overlay = "patches:" + patch.replace("value: kube-prometheus-stack", "value: monitoring")
    base_dir = tmp_path / "o"
    base_dir.mkdir()
    resources = render_with(base_dir, ["base"], ["components/monitoring"], overlay)
    labels = {r["kind"]: r["metadata"]["labels"].get("release") for r in resources if r["kind"] in CRD_KINDS}
    assert labels == {"ServiceMonitor": "monitoring", "PrometheusRule": "monitoring"}


def test_prometheusrule_is_the_compose_rule_file(rendered):
    """One source for the alerts: the PrometheusRule holds exactly the groups of deploy/prometheus/alerts.yml, and
    the committed file is what the generator makes from it."""
    spec = importlib.util.spec_from_file_location("make_rule", PROM_DIR / "make_prometheusrule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = K8S / "components" / "monitoring" / "prometheusrule.yaml"
    assert committed.read_text() == module.render(), "run deploy/prometheus/make_prometheusrule.py"
    alerts = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    for name in MONITORING_KUSTOMIZATIONS:
        assert _by_kind(rendered[name])["PrometheusRule"]["spec"]["groups"] == alerts


def test_prometheusrule_rules_pass_promtool(rendered, tmp_path):
    """What the Operator hands to Prometheus (spec.groups as a rule file) loads in Prometheus' own checker."""
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(yaml.safe_dump(_by_kind(rendered["monitoring"])["PrometheusRule"]["spec"]))
    proc = run([tool("promtool"), "check", "rules", str(rule_file)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count = sum(len(g["rules"]) for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"])
    assert f"SUCCESS: {count} rules found" in proc.stdout, proc.stdout


@pytest.mark.parametrize("name", sorted(MONITORING_KUSTOMIZATIONS))
def test_grafana_dashboard_configmap_is_the_compose_json(rendered, name):
    """The same dashboard JSON compose provisions, for Grafana's dashboard sidecar (label grafana_dashboard=1)."""
    names = {r["metadata"]["name"]: r for r in rendered[name] if r["kind"] == "ConfigMap"}
    cm = names["diffir-grafana-dashboard"]
    assert cm["data"] == {"diffir.json": DASHBOARD.read_text()}
    # `kubectl apply` copies the object into an annotation limited to 256 KiB in all.
    assert len(yaml.safe_dump(cm)) < 200_000
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize("overlay", sorted(KUSTOMIZATIONS))
def test_configmap_is_valid_service_settings(rendered, overlay, monkeypatch):
    """The ConfigMap's variables are real settings with valid values (checked by the service's own Settings)."""
    from service.settings import Settings

    env = _env(rendered[overlay])
    known = {f"DIFFIR_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, f"unknown settings: {set(env) - known}"
    settings = _settings(env, monkeypatch)
    assert settings.host == "0.0.0.0"
    cpu = overlay in CPU_KUSTOMIZATIONS
    assert settings.device == ("cpu" if cpu else "cuda")
    # Batch size: the service's default (8 on a GPU, 1 on a CPU, measured in bench/results/service.md) everywhere;
    # a CPU setup never batches more than one request.
    assert settings.max_batch_size is None, "leave DIFFIR_MAX_BATCH_SIZE to the service's per-device default"


@pytest.mark.parametrize("overlay", sorted(KUSTOMIZATIONS))
def test_metrics_port_is_wired_through(rendered, overlay, monkeypatch):
    """DIFFIR_METRICS_PORT moves /metrics off the API port: the container, the Service and the ServiceMonitor all
    expose that port, and nothing scrapes or probes /metrics on the API port."""
    res = _by_kind(rendered[overlay])
    settings = _settings(_env(rendered[overlay]), monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in _container(res["Deployment"])["ports"]}
    assert ports == {"http": settings.port, "metrics": settings.metrics_port}
    assert settings.metrics_port != settings.port
    svc_ports = {p["name"]: p for p in res["Service"]["spec"]["ports"]}
    assert svc_ports["metrics"]["targetPort"] == "metrics" and svc_ports["http"]["targetPort"] == "http"
    if overlay in MONITORING_KUSTOMIZATIONS:
        endpoints = res["ServiceMonitor"]["spec"]["endpoints"]
        assert [(e["port"], e["path"]) for e in endpoints] == [("metrics", "/metrics")]


@pytest.mark.parametrize("overlay", sorted(KUSTOMIZATIONS))
def test_deployment_contract(rendered, overlay):
    res = _by_kind(rendered[overlay])
    dep = res["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    env = _env(rendered[overlay])
    cpu = overlay in CPU_KUSTOMIZATIONS

    # The HPA owns the replica count: a `replicas` field would reset it on every apply.
    assert "replicas" not in dep["spec"]
    # GPU nodes are full: replace in place (no surge pod waiting for a GPU); CPU: surge, never unavailable.
    rolling = dep["spec"]["strategy"]["rollingUpdate"]
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert rolling == ({"maxSurge": 1, "maxUnavailable": 0} if cpu else {"maxSurge": 0, "maxUnavailable": 1})

    # Probes: start-up and readiness on /readyz (503 until warm and while draining), liveness on /healthz.
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup_budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert startup_budget >= 300, "model load + warm-up of every task needs minutes on a cold node"
    if cpu:  # a cold CPU pod times every `auto` candidate of every task before it is ready
        assert startup_budget >= 900, startup_budget

    # Threads: one per CPU of the container's limit (downward API), not one per core of the node.
    (threads,) = [e for e in c["env"] if e["name"] == "DIFFIR_TORCH_THREADS"]
    field = threads["valueFrom"]["resourceFieldRef"]
    assert field == {"containerName": c["name"], "resource": "limits.cpu", "divisor": "1"}
    assert "cpu" in resources_limits(c)
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
    assert c["envFrom"] == [{"configMapRef": {"name": _configmap(rendered[overlay])["metadata"]["name"]}}]
    (api_key,) = [e for e in c["env"] if e["name"] == "DIFFIR_API_KEY"]
    assert api_key["valueFrom"]["secretKeyRef"]["optional"] is True
    example = load_yaml_docs((K8S / "base" / "secret.example.yaml").read_text())[0]
    assert example["metadata"]["name"] == api_key["valueFrom"]["secretKeyRef"]["name"]
    assert api_key["valueFrom"]["secretKeyRef"]["key"] in example["stringData"]

    # Resources: GPU in the base, none in the CPU overlays; CPU/memory requests and limits everywhere.
    resources = c["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])
    if not cpu:
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert c["image"].endswith("-cuda")
    else:
        assert not any("gpu" in key for kind in ("requests", "limits") for key in resources[kind])
        assert "tolerations" not in pod
        assert c["image"].endswith("-cpu")


def resources_limits(container: dict) -> dict:
    return container["resources"]["limits"]


@pytest.mark.parametrize("overlay", sorted(KUSTOMIZATIONS))
def test_backend_is_the_measured_choice(rendered, overlay, monkeypatch):
    """CPU nodes: `auto` (bf16 where the CPU has bf16 units, 2x eager fp32 per bench/results/speed-default.md;
    otherwise the fastest fp32 path); GPU nodes: eager torch (TF32), the path bench/gpu_check.sh measures."""
    settings = _settings(_env(rendered[overlay]), monkeypatch)
    assert settings.backend == ("auto" if overlay in CPU_KUSTOMIZATIONS else "torch")


def test_autotune_cache_component_keeps_the_choice_on_a_claim(tmp_path, monkeypatch):
    resources = render_with(tmp_path, ["overlays/cpu"], ["components/autotune-cache"])
    res = _by_kind(resources)
    c = _container(res["Deployment"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in res["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mounts[env["DIFFIR_CACHE_DIR"]]]["persistentVolumeClaim"]["claimName"]
    assert claim == res["PersistentVolumeClaim"]["metadata"]["name"]
    assert res["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]  # replicas on several nodes
    assert "/tmp" in mounts  # the emptyDir stays for everything else
    rc, output = _validate(*_write(tmp_path, resources), version=K8S_VERSIONS[-1])
    assert rc == 0, output


def _write(tmp_path, resources: list[dict]) -> list:
    paths = []
    for i, resource in enumerate(resources):
        path = tmp_path / f"r{i}.yaml"
        path.write_text(yaml.safe_dump(resource))
        paths.append(path)
    return paths


@pytest.mark.parametrize("overlay", sorted(KUSTOMIZATIONS))
def test_selectors_and_autoscaling_fit_together(rendered, overlay):
    res = _by_kind(rendered[overlay])
    dep, svc, pdb, hpa = (res[k] for k in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (
        dep["spec"]["selector"]["matchLabels"],
        svc["spec"]["selector"],
        pdb["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    if overlay in MONITORING_KUSTOMIZATIONS:
        sm = res["ServiceMonitor"]
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        # No namespaceSelector: the ServiceMonitor selects Services of its own namespace, wherever that is.
        assert "namespaceSelector" not in sm["spec"]
        assert sm["metadata"]["namespace"] == svc["metadata"]["namespace"]
        # The operator names the job after the Service: the compose scrape job and the alerts use the same name.
        assert "jobLabel" not in sm["spec"]
    compose_jobs = {
        j["job_name"] for j in yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"]
    }
    assert svc["metadata"]["name"] in compose_jobs
    assert f'job="{svc["metadata"]["name"]}"' in (PROM_DIR / "alerts.yml").read_text()
    # The PDB leaves room for one voluntary eviction at the HPA's minimum (and for the GPU rollout's one
    # unavailable pod).
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    assert (
        hpa["spec"]["minReplicas"] - pdb["spec"]["minAvailable"]
        >= dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"]
    )
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


def test_overlays_directory_holds_exactly_the_tested_kustomizations():
    """A new overlay is rendered and validated by these tests, or it fails here."""
    found = {p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").exists()}
    assert found == set(KUSTOMIZATIONS) - {"base"}


def test_readme_documents_the_apply():
    readme = (REPO / "README.md").read_text()
    assert "## Deployment" in readme
    for needle in (
        "kubectl apply -k k8s/base",
        "kubectl apply -k k8s/overlays/cpu",
        "kubectl apply -k k8s/overlays/monitoring",
        "docker compose up",
        "make image",
        "newName:",
    ):
        assert needle in readme, needle
