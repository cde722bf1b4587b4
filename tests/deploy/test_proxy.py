"""The reverse proxy that closes uvicorn's timeout gap, for real: the compose proxy's nginx config (the same
template, filled from the environment `docker-compose config` resolves, timeouts shortened to 1 s) run by Debian's
nginx in front of a real `python -m service`. uvicorn only times out idle keep-alive connections; a client that
sends its headers or body slowly holds a connection for as long as it likes. Through the proxy it is cut off
within the configured timeout, and normal requests pass. The ingress-nginx settings for Kubernetes carry the same
numbers."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from http.client import HTTPConnection

import pytest
import yaml

from tests.deploy.conftest import K8S, REPO, run, tool
from tests.deploy.live import envsubst, free_port, http, png, running_nginx, running_service, tiny_checkpoints
from tests.deploy.test_compose import GPU_FILES, _seconds, config

pytestmark = pytest.mark.timeout(180)
TEMPLATE = REPO / "deploy" / "nginx" / "templates" / "diffir.conf.template"
INGRESS_VALUES = REPO / "deploy" / "ingress-nginx" / "values.yaml"
LOG = logging.getLogger(__name__)
TIMEOUT_S = 1.0  # header, body and idle timeouts for the test (compose defaults: 10 s, 30 s, 30 s)
SLACK_S = 1.5  # nginx checks its timers on the event loop; allow for a busy 2-core machine


def compose_proxy_env() -> dict[str, str]:
    return config(GPU_FILES)["services"]["proxy"]["environment"]


def _metric_total(base: str, name: str) -> float:
    status, _, body = http("GET", base + "/metrics", timeout=5)
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proxy")
    checkpoints = tiny_checkpoints(tmp / "ckpt")
    metrics_port = free_port()
    settings = {"DIFFIR_METRICS_PORT": str(metrics_port)}  # as in compose: /metrics off the API port
    with running_service(tmp, {"sr-x4": checkpoints["sr-x4"]}, **settings) as (service, base):
        port = free_port()
        env = {
            **compose_proxy_env(),
            "DIFFIR_UPSTREAM": base.removeprefix("http://"),
            "PROXY_LISTEN_PORT": f"127.0.0.1:{port}",
            "PROXY_CLIENT_HEADER_TIMEOUT": f"{TIMEOUT_S:g}s",
            "PROXY_CLIENT_BODY_TIMEOUT": f"{TIMEOUT_S:g}s",
            "PROXY_KEEPALIVE_TIMEOUT": f"{TIMEOUT_S:g}s",
        }
        site = envsubst(TEMPLATE.read_text(), env)
        with running_nginx(tmp / "nginx", site, port, tool("nginx")) as nginx:
            yield {
                "site": site,
                "proxy": ("127.0.0.1", port),
                "direct": ("127.0.0.1", int(base.rsplit(":", 1)[1])),
                "metrics": f"http://127.0.0.1:{metrics_port}",
                "service": service,
                "nginx": nginx,
            }


def _seconds_until_closed(address: tuple[str, int], first: bytes, trickle: bytes | None, limit: float) -> float | None:
    """Send `first`, then `trickle` whenever 0.2 s pass without an answer; the seconds until the server closes the
    connection, or None if it is still open after `limit` seconds."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(first)
        start = time.monotonic()
        sock.settimeout(0.2)
        while time.monotonic() - start < limit:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if trickle is not None:
                    try:
                        sock.sendall(trickle)
                    except (BrokenPipeError, ConnectionResetError):
                        return time.monotonic() - start
                continue
            except ConnectionResetError:
                return time.monotonic() - start
            if not data:
                return time.monotonic() - start
        return None


def test_template_is_fully_rendered_from_the_compose_environment(stack):
    """Every `${NAME}` of the template is set by the compose service (nginx -t passed when it started)."""
    env = compose_proxy_env()
    rendered = envsubst(TEMPLATE.read_text(), env)
    assert "${" not in rendered
    assert "$host" in rendered and "$proxy_add_x_forwarded_for" in rendered  # nginx's own variables untouched


def test_normal_requests_pass_through_the_proxy(stack):
    host, port = stack["proxy"]
    conn = HTTPConnection(host, port, timeout=60)
    body = png(24, 16, seed=3)
    conn.request("POST", "/restore/sr-x4", body=body, headers={"Content-Type": "image/png"})
    resp = conn.getresponse()
    restored = resp.read()
    assert resp.status == 200, restored[:300]
    assert restored.startswith(b"\x89PNG")
    # Same connection (keep-alive within the idle timeout): the health check and the same answer as direct.
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())
    conn.close()
    direct = http("POST", "http://{}:{}/restore/sr-x4".format(*stack["direct"]), body, {"Content-Type": "image/png"})
    assert direct[0] == 200 and direct[2] == restored
    # /metrics is on its own port, not reachable through the proxy.
    assert http("GET", f"http://{host}:{port}/metrics")[0] == 404
    assert _metric_total(stack["metrics"], "diffir_requests_total") >= 2


def test_slow_header_client_is_cut_off_by_the_proxy_not_by_uvicorn(stack):
    """Slowloris: a request line and then one header line every 0.2 s, never the blank line that ends them."""
    first = b"GET /healthz HTTP/1.1\r\nHost: diffir\r\n"
    trickle = b"X-Slow: 1\r\n"
    cut = _seconds_until_closed(stack["proxy"], first, trickle, limit=TIMEOUT_S + SLACK_S + 2)
    assert cut is not None, "the proxy kept a slowloris connection open"
    LOG.info("slow-header client cut off after %.2f s (timeout %.1f s)", cut, TIMEOUT_S)
    assert TIMEOUT_S * 0.8 <= cut <= TIMEOUT_S + SLACK_S, cut
    # The gap the proxy closes: without it the same client is still connected after three proxy timeouts (uvicorn
    # times out only idle keep-alive connections; a header timeout of the service's own, where it has one, is
    # longer by default).
    assert _seconds_until_closed(stack["direct"], first, trickle, limit=3 * TIMEOUT_S) is None
    assert stack["nginx"].alive() and stack["service"].alive()


def test_stalled_upload_is_cut_off_and_never_reaches_the_service(stack):
    """Half a body, then silence: the proxy drops it after the body timeout; the service never counts a request."""
    before = _metric_total(stack["metrics"], "diffir_requests_total")
    head = (
        b"POST /restore/sr-x4 HTTP/1.1\r\nHost: diffir\r\nContent-Type: image/png\r\nContent-Length: 20000\r\n\r\n"
        + b"\x89PNG" * 250
    )
    cut = _seconds_until_closed(stack["proxy"], head, None, limit=TIMEOUT_S + SLACK_S + 2)
    assert cut is not None, "the proxy kept a stalled upload open"
    LOG.info("stalled upload cut off after %.2f s (timeout %.1f s)", cut, TIMEOUT_S)
    assert TIMEOUT_S * 0.8 <= cut <= TIMEOUT_S + SLACK_S, cut
    assert _metric_total(stack["metrics"], "diffir_requests_total") == before


def test_idle_keep_alive_connection_is_closed(stack):
    request = b"GET /healthz HTTP/1.1\r\nHost: diffir\r\n\r\n"
    with socket.create_connection(stack["proxy"], timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        headers, _, body = answer.partition(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in headers.split(b"\r\n") if h.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(65536)
        start = time.monotonic()
        sock.settimeout(TIMEOUT_S + SLACK_S + 2)
        assert sock.recv(1) == b""  # the server closed the idle connection
        idle = time.monotonic() - start
    LOG.info("idle keep-alive connection closed after %.2f s (timeout %.1f s)", idle, TIMEOUT_S)
    assert TIMEOUT_S * 0.8 <= idle <= TIMEOUT_S + SLACK_S, idle


def test_oversized_upload_is_refused_before_it_is_read(stack, monkeypatch):
    """The proxy's body cap is the service's DIFFIR_MAX_BODY_BYTES; beyond it: 413 with the service's JSON code."""
    from service.settings import Settings

    for key in [k for k in os.environ if k.startswith("DIFFIR_")]:
        monkeypatch.delenv(key)
    cap = compose_proxy_env()["PROXY_MAX_BODY_SIZE"]
    assert cap.endswith("m") and int(cap[:-1]) * 2**20 == Settings().max_body_bytes
    head = (
        b"POST /restore/sr-x4 HTTP/1.1\r\nHost: diffir\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {Settings().max_body_bytes + 1}\r\n\r\n".encode()
    )
    with socket.create_connection(stack["proxy"], timeout=5) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if answer.count(b"}") and b"\r\n\r\n" in answer:
                break
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["code"] == "body_too_large"


def test_ingress_nginx_settings_match_the_compose_proxy(tmp_path, monkeypatch):
    """The Kubernetes side: the Ingress annotations and the controller-wide timeouts (ingress-nginx has no
    per-Ingress header timeout) carry the compose proxy's numbers; the Ingress routes to the API port only."""
    from service.settings import Settings
    from tests.deploy.test_k8s import render_with

    for key in [k for k in os.environ if k.startswith("DIFFIR_")]:
        monkeypatch.delenv(key)
    env = compose_proxy_env()
    resources = render_with(tmp_path, ["base"], ["components/ingress-nginx"])
    (ingress,) = [r for r in resources if r["kind"] == "Ingress"]
    assert ingress["metadata"]["namespace"] == "diffir"
    notes = {k.removeprefix("nginx.ingress.kubernetes.io/"): v for k, v in ingress["metadata"]["annotations"].items()}
    assert notes["proxy-body-size"] == env["PROXY_MAX_BODY_SIZE"]
    assert notes["proxy-request-buffering"] == "on"
    assert float(notes["proxy-read-timeout"]) == _seconds(env["PROXY_READ_TIMEOUT"]) > Settings().tiled_deadline_s
    controller = yaml.safe_load(INGRESS_VALUES.read_text())["controller"]["config"]
    assert float(controller["client-header-timeout"]) == _seconds(env["PROXY_CLIENT_HEADER_TIMEOUT"])
    assert float(controller["client-body-timeout"]) == _seconds(env["PROXY_CLIENT_BODY_TIMEOUT"])
    assert float(controller["keep-alive"]) == _seconds(env["PROXY_KEEPALIVE_TIMEOUT"])
    assert "keepalive_timeout 4s;" in TEMPLATE.read_text() and controller["upstream-keepalive-timeout"] == "4"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "diffir-serve", "port": {"name": "http"}}
    out = tmp_path / "ingress.yaml"
    out.write_text(yaml.safe_dump(ingress))
    proc = run([tool("kubernetes-validate"), "--strict", "-k", "1.37.0", str(out)], timeout=120)
    assert proc.returncode == 0 and "passed for resource ingress/diffir-serve" in proc.stdout, proc.stdout
    assert (K8S / "components" / "ingress-nginx" / "kustomization.yaml").exists()
