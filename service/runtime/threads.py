"""How many intra-op threads torch and ONNX Runtime get: `DIFFIR_TORCH_THREADS`, else the CPU limit.

A container sees every core of its node (`os.cpu_count()` says 64 on a 64-core node), and torch
starts one thread per core; with a 2-CPU limit those 64 threads share 2 CPUs' worth of time, and the
kernel throttles the whole group each period (latency many times the unthrottled one). So when
`DIFFIR_TORCH_THREADS` is unset the service reads the limit the kernel enforces: cgroup v2
`cpu.max` ("200000 100000" = 2 CPUs, "max ..." = none) or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`
(-1 = none), on the process's own cgroup and every parent up to the root (the smallest wins), and
the CPUs the process may run on (`sched_getaffinity`: cpusets). A fractional limit rounds up.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int | None
    """None: leave the libraries' own default (no setting and no limit below the core count)."""
    source: str
    """"DIFFIR_TORCH_THREADS", "cgroup v2 cpu.max", "cgroup v1 cfs quota", "cpu affinity" or "default"."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_paths(proc_cgroup: Path) -> dict[str, str]:
    """controller -> the process's cgroup path ("" is the v2 unified hierarchy)."""
    found: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                found[controller] = parts[2]
    return found


def _upwards(base: Path, own: str | None) -> list[Path]:
    """`base/own`, its parents up to `base` (in a container's cgroup namespace `own` is "/": only `base`)."""
    folders = [base]
    if own and own.strip("/"):
        here = base / own.strip("/")
        while here != base:
            folders.append(here)
            here = here.parent
    return folders


def _v2_limit(root: Path, own: str | None) -> float | None:
    limits = []
    for folder in _upwards(root, own):
        text = _read(folder / "cpu.max")
        if not text:
            continue
        quota, _, period = text.partition(" ")
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
            limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def _v1_limit(root: Path, own: str | None) -> float | None:
    limits = []
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for folder in _upwards(root / mount, own):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            valid = bool(quota and period and quota.lstrip("-").isdigit() and period.isdigit())
            if valid and int(quota) > 0 and int(period) > 0:  # type: ignore[arg-type]
                limits.append(int(quota) / int(period))  # type: ignore[arg-type]
    return min(limits) if limits else None


def cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> tuple[float | None, str]:
    """The CPU limit in CPUs (2.5 = two and a half) and which file said so; (None, "") without one."""
    own = _own_paths(proc_cgroup)
    limit = _v2_limit(root, own.get(""))
    if limit is not None:
        return limit, "cgroup v2 cpu.max"
    limit = _v1_limit(root, own.get("cpu"))
    if limit is not None:
        return limit, "cgroup v1 cfs quota"
    return None, ""


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def choose_threads(
    configured: int | None, root: Path | None = None, proc_cgroup: Path | None = None, cpus: int | None = None
) -> ThreadChoice:
    """`configured` when set; else the CPU limit (rounded up) when it is below the usable CPUs."""
    if configured:
        return ThreadChoice(configured, "DIFFIR_TORCH_THREADS")
    cpus = usable_cpus() if cpus is None else cpus
    limit, source = cpu_quota(root or CGROUP_ROOT, proc_cgroup or PROC_CGROUP)
    if limit is not None and math.ceil(limit) < cpus:
        return ThreadChoice(max(1, math.ceil(limit)), source)
    if cpus < (os.cpu_count() or cpus):
        return ThreadChoice(cpus, "cpu affinity")
    return ThreadChoice(None, "default")
