"""The CPU features a benchmark records beside its numbers: the ones that change how fast torch runs here
(timings are compared only between runs whose flags match)."""

from __future__ import annotations

from pathlib import Path

SPEED_FLAG_PREFIXES = ("avx512", "amx", "avx2", "avx_vnni")


def cpu_flags() -> list[str]:
    """The speed-relevant flags of the first CPU in /proc/cpuinfo, sorted; empty where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(SPEED_FLAG_PREFIXES))
