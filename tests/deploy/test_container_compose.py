"""`docker compose up` of the CPU files for real (`-m container`; scripts/container-check.sh sets the engine up):
the service image, the nginx proxy in front of it and Prometheus scraping it, on compose's own network, with
every published port on 127.0.0.1. Grafana is not started (its image cannot be had here; the dashboard's
queries are evaluated against a real Prometheus by test_monitoring_e2e.py).

Stand-ins: on a machine without Docker Hub, scripts/container-check.sh builds `nginxinc/nginx-unprivileged`
and `prom/prometheus` look-alikes from Debian's nginx and prometheus packages (same user, port, entrypoint
contract and paths) and exports their tags; this module points compose at them with an override file. The
compose files themselves, the nginx template, prometheus.yml and alerts.yml are the shipped ones. With no
DIFFIR_CONTAINER_* tags set, compose pulls the real images."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse

import pytest
import yaml

from bench.container_engine import BaseImages, Container, docker, get
from tests.deploy.conftest import PROM_DIR, REPO
from tests.deploy.live import free_port, http, png
from tests.deploy.test_container_image import in_flight_through_stop
from tests.deploy.test_proxy import _seconds_until_closed

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]
SERVICES = ["proxy", "diffir", "prometheus"]  # grafana: no image on a machine without Docker Hub (see above)
TIMEOUT_S = 2  # the proxy's header and body timeouts for this run (compose defaults: 10 s and 30 s)
BODY_CAP = "1m"
UP_LIMIT_S = 900  # bound on `up` and on the wait for ready, far above any cold start seen here
SLACK_S = 2.0  # nginx checks its timers on the event loop of a busy 2-core machine


def _compose_cmd(project: str, override: str | None) -> list[str]:
    files = ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml", *(["-f", override] if override else [])]
    return ["docker", "compose", "-p", project, *files]


@pytest.fixture(scope="module")
def stack(cpu_image, tmp_path_factory):
    images = BaseImages.from_env()
    override = None
    standins = {"proxy": images.proxy_image, "prometheus": images.prometheus_image}
    if any(standins.values()):
        override = tmp_path_factory.mktemp("compose") / "standins.yml"
        override.write_text(yaml.safe_dump({"services": {k: {"image": v} for k, v in standins.items() if v}}))
    project = f"diffir-check-{os.getpid()}"
    ports = {"api": free_port(), "prometheus": free_port()}
    env = {
        **os.environ,
        "GRAFANA_ADMIN_PASSWORD": "not-started-here",  # required by the file even when grafana is not started
        "PUBLISH_ADDRESS": "127.0.0.1",
        "DIFFIR_PUBLISH_PORT": str(ports["api"]),
        "PROMETHEUS_PUBLISH_PORT": str(ports["prometheus"]),
        "PROXY_CLIENT_HEADER_TIMEOUT": f"{TIMEOUT_S}s",
        "PROXY_CLIENT_BODY_TIMEOUT": f"{TIMEOUT_S}s",
        "PROXY_MAX_BODY_SIZE": BODY_CAP,
    }
    cmd = _compose_cmd(project, str(override) if override else None)

    def compose(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*cmd, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"compose {' '.join(args)}: {proc.stderr[-3000:]}"
        return proc

    try:
        compose("up", "-d", "--no-build", *SERVICES, timeout=UP_LIMIT_S)
        api = f"http://127.0.0.1:{ports['api']}"
        _wait(lambda: _status(api + "/readyz") == 200, UP_LIMIT_S, "the service ready through the proxy")
        ids = compose("ps", "-q").stdout.split()
        containers = {_service_name(Container(i)): Container(i) for i in ids}
        yield {
            "api": api,
            "prometheus": f"http://127.0.0.1:{ports['prometheus']}",
            "compose": compose,
            "project": project,
            "containers": containers,
        }
    finally:
        subprocess.run([*cmd, "down", "-v", "--timeout", "5"], cwd=REPO, env=env, capture_output=True, timeout=300)


def _service_name(container: Container) -> str:
    return container.inspect()["Config"]["Labels"]["com.docker.compose.service"]


def _status(url: str) -> int | None:
    try:
        return get(url)[0]
    except OSError:
        return None


def _wait(predicate, limit_s: float, what: str, interval_s: float = 1.0):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {limit_s} s")


def _prometheus(stack, path: str, **params: str) -> dict:
    status, body = get(f"{stack['prometheus']}{path}?{urllib.parse.urlencode(params)}", timeout=10)
    assert status == 200, body[:300]
    return json.loads(body)["data"]


def test_the_cpu_stack_runs_the_services_it_should(stack):
    assert set(stack["containers"]) == set(SERVICES)
    assert all(c.inspect()["State"]["Running"] for c in stack["containers"].values())


def test_every_healthcheck_turns_healthy(stack):
    checked = {}
    for name, container in stack["containers"].items():
        if container.inspect()["Config"].get("Healthcheck"):
            checked[name] = _wait(
                lambda c=container: (c.inspect()["State"]["Health"]["Status"] == "healthy") or None,
                120,
                f"{name} healthy",
            )
    assert "diffir" in checked, "the service has no healthcheck in compose"


def test_proxy_answers_a_restore(stack):
    body = png(64, 48, seed=5)
    status, headers, restored = http(
        "POST", stack["api"] + "/restore/deblur?seed=5&format=png", body, {"Content-Type": "image/png"}, timeout=120
    )
    assert status == 200, restored[:300]
    assert restored.startswith(b"\x89PNG")
    assert any(name.lower() == "x-request-id" for name in headers), headers  # the service's answer, passed on


def test_proxy_caps_the_body(stack):
    too_big = b"\0" * (1024 * 1024 + 1)
    status, _, body = http("POST", stack["api"] + "/restore/deblur", too_big, {"Content-Type": "image/png"})
    assert status == 413 and json.loads(body)["code"] == "body_too_large", body[:300]


def test_proxy_cuts_off_slow_headers_and_stalled_bodies(stack):
    address = ("127.0.0.1", int(stack["api"].rsplit(":", 1)[1]))
    slow_headers = _seconds_until_closed(address, b"POST /restore/deblur HTTP/1.1\r\n", b"X-a: b\r\n", 20)
    head = b"POST /restore/deblur HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    stalled_body = _seconds_until_closed(address, head + b"\x89PNG", None, 20)
    for seconds in (slow_headers, stalled_body):
        assert seconds is not None and TIMEOUT_S - 0.5 <= seconds <= TIMEOUT_S + SLACK_S, (slow_headers, stalled_body)


def test_prometheus_scrapes_the_service_and_loads_the_alert_rules(stack):
    def service_up():
        targets = _prometheus(stack, "/api/v1/targets", state="active")["activeTargets"]
        mine = [t for t in targets if t["labels"].get("job") == "diffir-serve"]
        return mine if mine and all(t["health"] == "up" for t in mine) else None

    targets = _wait(service_up, 90, "the diffir-serve target up", interval_s=2)
    assert [t["labels"]["instance"] for t in targets] == ["diffir:9464"]
    rules = _prometheus(stack, "/api/v1/rules", type="alert")["groups"]
    loaded = {rule["name"] for group in rules for rule in group["rules"]}
    shipped = {r["alert"] for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert loaded == shipped and shipped
    up = _prometheus(stack, "/api/v1/query", query='up{job="diffir-serve"}')["result"]
    assert [sample["value"][1] for sample in up] == ["1"]


def test_nothing_runs_as_root_or_writes_outside_its_volumes(stack):
    for name, container in stack["containers"].items():
        uids = container.process_uids()
        assert uids and 0 not in uids.values(), (name, uids)
        assert container.inspect()["HostConfig"]["ReadonlyRootfs"] is True, name
        assert container.changed_paths() == [], (name, container.changed_paths())


def test_compose_stop_drains(stack):
    """`docker compose stop` while the service holds requests sent through the proxy: the proxy (stopped
    first, it depends on the service) and the service both finish them, and every container exits 0."""
    url = stack["api"] + "/restore/deblur?seed=1&format=png"
    service = stack["containers"]["diffir"]
    metrics_port = int(service.inspect_env()["DIFFIR_METRICS_PORT"])

    def stop():
        start = time.monotonic()
        stack["compose"]("stop", timeout=300)
        return time.monotonic() - start, None

    answers, _, _ = in_flight_through_stop(service, url, stop, metrics_port=metrics_port)
    assert [status for status, _ in answers] == [200] * len(answers), answers
    exits = {name: c.inspect()["State"]["ExitCode"] for name, c in stack["containers"].items()}
    # After its drain uvicorn re-raises the SIGTERM it caught. Under compose's `init: true` the service is not
    # PID 1, so that ends it with 143 (128 + SIGTERM); as PID 1 (plain `docker run`) the kernel ignores it: 0.
    assert exits == {"proxy": 0, "prometheus": 0, "diffir": 143}, exits
    assert docker("ps", "-q", "--filter", f"label=com.docker.compose.project={stack['project']}").stdout == ""
