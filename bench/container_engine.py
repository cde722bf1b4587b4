"""The `docker` CLI as the container checks use it: build the CPU image from a clean checkout, run containers,
watch a start-up. Shared by tests/deploy/test_container_*.py (behaviour) and bench.container (timings).

Everything goes through the same `docker` commands a user types, so what is checked is what a user gets.
Base images and the torch index come from the DIFFIR_CONTAINER_* variables that scripts/container-check.sh
exports (images built on a machine without Docker Hub); without them the Dockerfiles' own defaults apply.
Every wait here is bounded by a deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
CPU_DOCKERFILE = "docker/Dockerfile.cpu"
# The tag docker-compose.cpu.yml gives the CPU service image, so `docker compose up --no-build` runs this build.
CPU_IMAGE = "diffir-serve:cpu"
SERVICE_PORT = 8000


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One `docker` command; a failure raises with the command's stderr in the message."""
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def engine_problem() -> str | None:
    """Why no container engine can be used here, or None when `docker info` answers."""
    if shutil.which("docker") is None:
        return "no `docker` CLI on PATH (scripts/container-check.sh installs Debian's docker.io and starts dockerd)"
    try:
        proc = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 30 s"
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`docker info` failed ({reason}); scripts/container-check.sh starts an engine"
    return None


@dataclass(frozen=True)
class BaseImages:
    """Where the builds and the compose stand-ins come from (None: the files' own defaults)."""

    python_image: str | None
    torch_index: str | None
    proxy_image: str | None
    prometheus_image: str | None

    @classmethod
    def from_env(cls) -> BaseImages:
        def get(name: str) -> str | None:
            return os.environ.get(f"DIFFIR_CONTAINER_{name}") or None

        return cls(get("PYTHON_IMAGE"), get("TORCH_INDEX"), get("PROXY_IMAGE"), get("PROMETHEUS_IMAGE"))

    def build_args(self) -> list[str]:
        args = []
        if self.python_image:
            args += ["--build-arg", f"PYTHON_IMAGE={self.python_image}"]
        if self.torch_index:
            args += ["--build-arg", f"TORCH_INDEX={self.torch_index}"]
        return args


def clean_checkout(dest: Path) -> Path:
    """The files a fresh clone of this tree would have (tracked plus new, not ignored), copied to `dest`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not in the checkout either
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


@dataclass(frozen=True)
class Build:
    tag: str
    seconds: float
    size_bytes: int
    image_id: str
    no_cache: bool


def build_image(
    tag: str = CPU_IMAGE,
    dockerfile: str = CPU_DOCKERFILE,
    target: str = "serve",
    no_cache: bool = False,
    timeout_s: float = 3600,
) -> Build:
    """`docker build` of a clean checkout (host network: the loopback wheel index is reachable), timed."""
    with tempfile.TemporaryDirectory(prefix="diffir-build-") as tmp:
        context = clean_checkout(Path(tmp) / "src")
        cmd = [
            "build",
            "--force-rm",
            "--network",
            "host",
            "-f",
            str(context / dockerfile),
            "--target",
            target,
            "-t",
            tag,
        ]
        cmd += [*BaseImages.from_env().build_args(), *(["--no-cache"] if no_cache else []), str(context)]
        start = time.monotonic()
        docker(*cmd, timeout=timeout_s)
        seconds = time.monotonic() - start
    info = json.loads(docker("image", "inspect", tag).stdout)[0]
    return Build(tag, seconds, int(info["Size"]), info["Id"], no_cache)


@contextlib.contextmanager
def network(name: str) -> Iterator[str]:
    """A user-defined bridge network of our own (the engine may have no default bridge), removed afterwards."""
    docker("network", "rm", name, check=False)
    docker("network", "create", name)
    try:
        yield name
    finally:
        docker("network", "rm", name, check=False)


def parse_time(stamp: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as a Unix time."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head + "+00:00").timestamp()
    return base + (float("0." + frac.rstrip("Z")) if frac else 0.0)


@dataclass
class Container:
    """A running container, by id; every query is one `docker` command."""

    id: str

    def inspect(self) -> dict:
        return json.loads(docker("inspect", self.id).stdout)[0]

    def inspect_env(self) -> dict[str, str]:
        return {name: value for name, _, value in (item.partition("=") for item in self.inspect()["Config"]["Env"])}

    def started_at(self) -> float:
        return parse_time(self.inspect()["State"]["StartedAt"])

    def host_port(self, port: int = SERVICE_PORT) -> int:
        line = docker("port", self.id, f"{port}/tcp").stdout.splitlines()[0]
        return int(line.rsplit(":", 1)[1])

    def logs(self, timestamps: bool = False) -> list[str]:
        proc = docker("logs", *(["--timestamps"] if timestamps else []), self.id)
        return (proc.stdout + proc.stderr).splitlines()

    def log_times(self) -> list[float]:
        """Unix time of every log line (stdout and stderr)."""
        return sorted(parse_time(line.split(" ", 1)[0]) for line in self.logs(timestamps=True) if line.strip())

    def process_uids(self) -> dict[str, int]:
        """Every process in the container: `pid command` -> real uid (as the host's ps sees it)."""
        rows = docker("top", self.id, "-eo", "uid,pid,comm").stdout.splitlines()[1:]
        return {f"{pid} {comm}": int(uid) for uid, pid, comm in (row.split(None, 2) for row in rows)}

    def changed_paths(self) -> list[str]:
        """`docker diff` (what was written to the container's own layer), less the mount points the engine
        itself creates for volumes and bind mounts that the image lacks (`A /etc/prometheus/alerts.yml`)."""
        info = self.inspect()
        tmpfs = info["HostConfig"].get("Tmpfs") or {}
        mounts = [Path(m["Destination"]) for m in info["Mounts"]] + [Path(p) for p in tmpfs]
        if info["HostConfig"].get("Init"):
            mounts.append(Path("/usr/sbin/docker-init"))  # `init: true`: the engine mounts its init binary there
        changed = []
        for line in docker("diff", self.id).stdout.splitlines():
            path = Path(line.split(" ", 1)[1])
            if not any(path == m or path in m.parents for m in mounts):
                changed.append(line)
        return changed

    def metric(self, name: str, port: int = SERVICE_PORT, **labels: str) -> float:
        """One sample of the service's /metrics, read from inside the container (the metrics port may be
        unpublished, as in compose); 0 when the series does not exist yet."""
        script = "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())"
        url = f"http://127.0.0.1:{port}/metrics"
        text = docker("exec", self.id, "python", "-c", script, url, timeout=60).stdout
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def stop(self, timeout_s: int) -> tuple[float, int]:
        """`docker stop -t`: (seconds it took, the exit code)."""
        start = time.monotonic()
        docker("stop", "-t", str(timeout_s), self.id, timeout=timeout_s + 30)
        return time.monotonic() - start, int(self.inspect()["State"]["ExitCode"])

    def remove(self) -> None:
        docker("rm", "-f", "-v", self.id, check=False)


def run_detached(image: str, *options: str, command: tuple[str, ...] = ()) -> Container:
    return Container(docker("run", "-d", *options, image, *command).stdout.strip())


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of one GET; HTTP errors are answers. Connection errors raise OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@dataclass
class StartTimeline:
    """One start-up seen from outside, in seconds after the container's State.StartedAt."""

    first_answer_s: float | None = None  # first HTTP answer of any status on /healthz
    first_healthz_s: float | None = None  # first /healthz 200
    first_readyz_s: float | None = None  # first /readyz 200
    readyz_bodies: list[tuple[float, int, str]] = field(default_factory=list)  # each distinct (t, status, body)
    health: list[tuple[float, str, int]] = field(default_factory=list)  # each change of (Health.Status, streak)
    healthy_s: float | None = None  # Docker health first `healthy`
    health_at_ready: str | None = None  # Docker health status when /readyz first answered 200
    max_failing_streak: int = 0
    log_gaps_s: list[float] = field(default_factory=list)  # pauses between log lines, start -> ready
    health_log: list[dict] = field(default_factory=list)  # every HEALTHCHECK run seen (Docker keeps only 5)

    @property
    def longest_log_gap_s(self) -> float | None:
        return max(self.log_gaps_s) if self.log_gaps_s else None

    def failed_checks(self) -> list[dict]:
        return [entry for entry in self.health_log if entry["ExitCode"] != 0]

    def as_dict(self) -> dict:
        return {
            "first_answer_s": self.first_answer_s,
            "first_healthz_200_s": self.first_healthz_s,
            "first_readyz_200_s": self.first_readyz_s,
            "docker_healthy_s": self.healthy_s,
            "docker_health_at_ready": self.health_at_ready,
            "max_failing_streak": self.max_failing_streak,
            "longest_log_gap_s": self.longest_log_gap_s,
            "health_timeline": [{"t_s": round(t, 2), "status": s, "failing_streak": n} for t, s, n in self.health],
            "readyz_bodies": [{"t_s": round(t, 2), "status": c, "body": b} for t, c, b in self.readyz_bodies],
            "health_checks": len(self.health_log),
            "failed_health_checks": [{k: e[k] for k in ("Start", "ExitCode", "Output")} for e in self.failed_checks()],
        }


def _progress(body: str) -> str:
    """What a /readyz body says is happening, without its clock (a new entry only when that changes)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    return str(doc.get("message", doc.get("status"))) if isinstance(doc, dict) else body


def watch_start(
    container: Container, port: int, timeout_s: float, until_healthy: bool = True, poll_s: float = 0.1
) -> StartTimeline:
    """Poll /healthz and /readyz (every `poll_s`) and Docker's health (a thread, every 0.5 s) from the start
    until /readyz is 200 and, with `until_healthy`, Docker says `healthy`; raises TimeoutError past the limit."""
    base = f"http://127.0.0.1:{port}"
    started = container.started_at()
    line = StartTimeline()
    stop = threading.Event()

    seen: dict[str, dict] = {}

    def follow_health() -> None:
        last = None
        while not stop.is_set():
            state = container.inspect()["State"]
            health = state.get("Health") or {}
            for entry in health.get("Log") or []:  # Docker keeps the last 5 checks: collect them all
                seen.setdefault(entry["Start"], entry)
            now = (health.get("Status"), int(health.get("FailingStreak", 0)))
            if now != last:
                line.health.append((time.time() - started, *now))
                last = now
            line.max_failing_streak = max(line.max_failing_streak, now[1])
            if now[0] == "healthy" and line.healthy_s is None:
                line.healthy_s = time.time() - started
            if not state["Running"]:
                return
            stop.wait(0.5)

    watcher = threading.Thread(target=follow_health, daemon=True)
    watcher.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            now = time.time() - started
            try:
                status, _ = get(base + "/healthz")
                line.first_answer_s = line.first_answer_s if line.first_answer_s is not None else now
                if status == 200 and line.first_healthz_s is None:
                    line.first_healthz_s = now
                if line.first_readyz_s is None:
                    status, body = get(base + "/readyz")
                    text = body.decode("utf-8", "replace")[:500]
                    if not line.readyz_bodies or _progress(line.readyz_bodies[-1][2]) != _progress(text):
                        line.readyz_bodies.append((round(now, 2), status, text))
                    if status == 200:
                        line.first_readyz_s = now
                        line.health_at_ready = (container.inspect()["State"].get("Health") or {}).get("Status")
            except OSError:
                pass  # port not open yet, or the connection was reset
            if line.first_readyz_s is not None and (not until_healthy or line.healthy_s is not None):
                break
            if not container.inspect()["State"]["Running"]:
                raise RuntimeError("the container exited during start-up:\n" + "\n".join(container.logs()[-40:]))
            time.sleep(poll_s)
        else:
            raise TimeoutError(f"no ready/healthy start within {timeout_s:.0f} s: {line.as_dict()}")
    finally:
        stop.set()
        watcher.join(timeout=10)
    ready_at = started + line.first_readyz_s
    stamps = [started] + [t for t in container.log_times() if t <= ready_at] + [ready_at]
    line.log_gaps_s = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
    for entry in (container.inspect()["State"].get("Health") or {}).get("Log") or []:
        seen.setdefault(entry["Start"], entry)
    line.health_log = [seen[k] for k in sorted(seen)]
    return line
