"""The image's runtime contract without an engine: the service, with the CPU image's environment, runs on a
read-only root filesystem with only a fresh tmpfs on /tmp writable (a mount namespace made with `unshare`)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.deploy.conftest import REPO
from tests.deploy.live import http, png, running_service, tiny_checkpoints
from tests.deploy.test_docker import _env, parse_dockerfile

pytestmark = pytest.mark.timeout(120)

# Inside: the model files appear read-only at /srv, /tmp is an empty tmpfs, everything else is read-only.
# When the checkout itself lives under /tmp (CI may clone there), it is carried over read-only, so the
# test's virtualenv stays reachable inside the fresh tmpfs.
SANDBOX = r"""
set -e
mount --bind "$DIFFIR_TEST_MODELS" /srv
if [ -n "$DIFFIR_TEST_KEEP" ]; then mount --bind "$DIFFIR_TEST_KEEP" /mnt; fi
mount -t tmpfs -o size=256m,mode=1777 tmpfs /tmp
if [ -n "$DIFFIR_TEST_KEEP" ]; then
  mkdir -p "$DIFFIR_TEST_KEEP"
  mount --bind /mnt "$DIFFIR_TEST_KEEP"
  mount -o remount,ro,bind "$DIFFIR_TEST_KEEP"
fi
mount -o remount,ro,bind /
mount -o remount,ro,bind /srv
exec "$@"
"""


def keep_env() -> dict[str, str]:
    """The checkout to carry into the sandbox when /tmp would hide it."""
    under_tmp = REPO.resolve().is_relative_to("/tmp")
    return {"DIFFIR_TEST_KEEP": str(REPO.resolve()) if under_tmp else ""}


def sandbox(models: str) -> tuple[str, ...]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare (util-linux) is needed for the read-only root check")
    return (unshare, "--user", "--map-root-user", "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sh")


def image_env() -> dict[str, str]:
    stages = parse_dockerfile(REPO / "docker" / "Dockerfile.cpu")
    env = _env(stages, next(s for s in stages if s["name"] == "serve"))
    env.pop("PATH")  # /opt/venv exists only in the image; the test's virtualenv stands in for it
    return env


def test_sandbox_is_really_read_only(tmp_path):
    """Negative control: writes outside /tmp fail in the sandbox, /tmp works."""
    prefix = sandbox(str(tmp_path))
    probe = (
        "import os, pathlib\n"
        "pathlib.Path('/tmp/ok').write_text('x')\n"
        "try:\n    pathlib.Path(os.environ['TARGET']).write_text('x')\nexcept OSError as e:\n    print(e.errno)\n"
        "else:\n    print('writable')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "DIFFIR_TEST_MODELS": str(tmp_path), "TARGET": str(REPO / "ro-probe"), **keep_env()}
    out = subprocess.run([*prefix, sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "30", out.stdout  # EROFS
    assert not (REPO / "ro-probe").exists()


def test_service_runs_on_a_read_only_root_with_the_image_environment(tmp_path):
    models = tmp_path / "models"
    checkpoints = tiny_checkpoints(models)
    inside = {task: "/srv/" + path.name for task, path in checkpoints.items()}
    env = {**image_env(), "DIFFIR_TEST_MODELS": str(models), **keep_env()}
    assert env["HOME"] == "/tmp" and env["DIFFIR_DEVICE"] == "cpu"
    with running_service(tmp_path, inside, prefix=sandbox(str(models)), extra_env=env, DIFFIR_HOST="127.0.0.1") as (
        service,
        base,
    ):
        status, _, body = http("POST", base + "/restore/sr-x4", png(24, 16), {"Content-Type": "image/png"})
        assert status == 200, body[:300]
        assert body.startswith(b"\x89PNG")
        status, _, metrics = http("GET", base + "/metrics")
        assert status == 200 and b"diffir_requests_total" in metrics
        assert http("GET", base + "/healthz")[0] == 200
        log = service.logs()
    assert "Read-only file system" not in log, log[-4000:]
