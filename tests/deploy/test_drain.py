"""SIGTERM under load, with the drain the Kubernetes manifests configure: readiness drops, nothing accepted is
lost, new work is refused, and the process exits well inside terminationGracePeriodSeconds (minus preStop)."""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import pytest

from tests.deploy.conftest import K8S, load_yaml_docs
from tests.deploy.live import free_port, http, png, running_service, tiny_checkpoints, wait_for

pytestmark = pytest.mark.timeout(180)
LOAD = 12  # concurrent requests in flight when SIGTERM arrives


def _k8s_shutdown_budget() -> tuple[float, float]:
    """(DIFFIR_DRAIN_SECONDS, seconds between SIGTERM and SIGKILL) from the base manifests."""
    env = dict(line.split("=", 1) for line in (K8S / "base" / "diffir.env").read_text().splitlines() if "=" in line)
    (deployment,) = load_yaml_docs((K8S / "base" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = float(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    return float(env["DIFFIR_DRAIN_SECONDS"]), pod["terminationGracePeriodSeconds"] - pre_stop


def _metric(metrics_base: str, name: str) -> float:
    status, _, body = http("GET", metrics_base + "/metrics", timeout=5)
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            total += float(match.group(2))
    return total


def test_sigterm_under_load_loses_nothing(tmp_path):
    drain_s, budget_s = _k8s_shutdown_budget()
    metrics_port = free_port()
    checkpoints = tiny_checkpoints(tmp_path / "ckpt")
    settings = {
        "DIFFIR_DRAIN_SECONDS": str(drain_s),
        "DIFFIR_METRICS_PORT": str(metrics_port),  # stays up while the main port drains: readiness is observable
        "DIFFIR_MAX_BATCH_SIZE": "2",
        "DIFFIR_QUEUE_SIZE": "64",
    }
    with running_service(tmp_path, {"deblur": checkpoints["deblur"]}, **settings) as (service, base):
        metrics_base = f"http://127.0.0.1:{metrics_port}"
        assert _metric(metrics_base, "diffir_ready") == 1
        body = png(160, 160)
        results: list[tuple[int, dict, bytes] | Exception] = [None] * LOAD  # type: ignore[list-item]

        def send(i: int) -> None:
            try:
                answer = http("POST", f"{base}/restore/deblur", body, {"Content-Type": "image/png"}, timeout=90)
            except OSError as exc:  # refused before being accepted
                answer = exc
            results[i] = answer

        threads = [threading.Thread(target=send, args=(i,)) for i in range(LOAD)]
        for t in threads:
            t.start()
        queued = wait_for(
            lambda: (d := _metric(metrics_base, "diffir_queue_depth")) >= 4 and d, 60, "a backlog", interval=0.02
        )
        # The server is paused at once, so that what is in flight at the signal is known: every request not yet
        # answered while it stands still (a short pause lets answers already sent arrive). Of the `queued` seen a
        # moment ago, only those answered in between can have finished before the signal.
        answered_at_read = {i for i, r in enumerate(results) if r is not None}
        service.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        in_flight = [i for i, r in enumerate(results) if r is None]
        finished_since_read = len(set(range(LOAD)) - set(in_flight) - answered_at_read)
        service.proc.send_signal(signal.SIGTERM)  # pending until the process runs again
        signalled = time.monotonic()
        service.proc.send_signal(signal.SIGCONT)

        # Readiness drops at once (the kubelet's /readyz gets 503 or a refused connection from now on).
        wait_for(lambda: _metric(metrics_base, "diffir_ready") == 0, 5, "diffir_ready to drop", interval=0.02)
        try:
            status, _, answer = http("GET", base + "/readyz", timeout=5)
            assert status == 503
        except OSError:
            pass
        # New work is refused while the accepted work finishes.
        try:
            status, headers, answer = http("POST", f"{base}/restore/deblur", body, {"Content-Type": "image/png"})
            assert (
                status == 503
                and json.loads(answer)["code"] == "draining"
                and "retry-after" in {k.lower() for k in headers}
            )
        except OSError:
            pass

        for t in threads:
            t.join(90)
        service.proc.wait(budget_s)
        exited_after = time.monotonic() - signalled
        # uvicorn re-raises the stop signal after a clean shutdown: exit status 143 in a container, normal to k8s.
        assert service.proc.returncode in (0, -signal.SIGTERM), service.logs()[-4000:]
        assert '"msg": "stopped"' in service.logs()

    completed = [r for r in results if not isinstance(r, Exception) and r[0] == 200]
    refused = [r for r in results if isinstance(r, Exception) or r[0] == 503]
    assert len(completed) + len(refused) == LOAD, [r if isinstance(r, Exception) else r[:2] for r in results]
    for r in refused:
        if not isinstance(r, Exception):
            assert json.loads(r[2])["code"] == "draining"
    # Every request that was queued at SIGTERM (and everything accepted before it) got its image: counted among
    # the requests in flight at the signal only, never those answered before it.
    completed_in_flight = [i for i in in_flight if not isinstance(results[i], Exception) and results[i][0] == 200]
    assert len(completed_in_flight) >= queued - finished_since_read, (completed_in_flight, queued, finished_since_read)
    for _, headers, data in completed:
        assert headers["content-type"] == "image/png" and data.startswith(b"\x89PNG")
    assert exited_after < drain_s, f"exit took {exited_after:.1f} s (drain {drain_s} s)"
    assert exited_after < budget_s
    print(
        f"SIGTERM, {queued:.0f} queued, {len(in_flight)} unanswered: {len(completed_in_flight)} of them done, "
        f"{len(refused)} refused, exit in {exited_after:.2f} s"
    )


def test_backlog_longer_than_the_drain_still_exits_inside_the_grace_period(tmp_path):
    """When more work is queued than DIFFIR_DRAIN_SECONDS allows, the process still stops in time (the kubelet
    would SIGKILL it otherwise) and every client gets an HTTP answer rather than a hang or a reset."""
    drain_s, budget_s = 1.0, _k8s_shutdown_budget()[1] - _k8s_shutdown_budget()[0]  # the manifests' margin
    checkpoints = tiny_checkpoints(tmp_path / "ckpt")
    metrics_port = free_port()
    with running_service(
        tmp_path,
        {"deblur": checkpoints["deblur"]},
        DIFFIR_DRAIN_SECONDS=str(drain_s),
        DIFFIR_MAX_BATCH_SIZE="2",
        DIFFIR_METRICS_PORT=str(metrics_port),
    ) as (service, base):
        body = png(160, 160)
        statuses: list[int | str] = []

        def send() -> None:
            try:
                statuses.append(http("POST", f"{base}/restore/deblur", body, {"Content-Type": "image/png"})[0])
            except OSError as exc:
                statuses.append(type(exc).__name__)

        threads = [threading.Thread(target=send) for _ in range(LOAD + 4)]
        for t in threads:
            t.start()
        # Every request decoded and queued (a backlog of several seconds of model time), then SIGTERM.
        wait_for(
            lambda: _metric(f"http://127.0.0.1:{metrics_port}", "diffir_input_pixels_count") >= LOAD + 4,
            60,
            "all requests to be accepted",
            interval=0.02,
        )
        signalled = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        service.proc.wait(drain_s + budget_s)
        exited_after = time.monotonic() - signalled
        for t in threads:
            t.join(10)
    assert exited_after < drain_s + budget_s, exited_after
    assert len(statuses) == LOAD + 4 and all(isinstance(s, int) for s in statuses), statuses
    print(f"drain {drain_s} s with a longer backlog: exit in {exited_after:.2f} s, statuses {sorted(statuses)}")
