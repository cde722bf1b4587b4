"""The CPU image in a real container engine, timed: build, size, cold and warm start, Docker's health timeline.

    scripts/container-check.sh bench            # sets up an engine (and base images) where there is none
    .venv/bin/python -m bench.container --out bench/results   # with an engine already running

1. `docker build --no-cache` of a clean checkout (docker/Dockerfile.cpu, target `serve`): wall time and size.
2. Cold start: `docker run` as the README runs the image (read-only root, `/tmp` on a tmpfs), watched from
   outside: first answer on the port, first `/healthz` 200, first `/readyz` 200 (seconds after the
   container's StartedAt), Docker's HEALTHCHECK status over time and the longest pause between log lines.
3. Warm start: the same, twice, with the named cache volume docker-compose.yml mounts into the service
   (first run fills a fresh volume, the second is timed) — when the compose file has one.
Results: <out>/container.json and <out>/container.md, with the CPU flags and engine version.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.container_engine import (
    CPU_IMAGE,
    ROOT,
    BaseImages,
    Container,
    build_image,
    docker,
    engine_problem,
    network,
    run_detached,
    watch_start,
)
from bench.machine import cpu_flags

log = logging.getLogger("bench.container")
README_RUN = ["--read-only", "--tmpfs", "/tmp:size=2g,mode=1777"]
START_LIMIT_S = 900
# The targets for a start-up that talks (docs: README, Deployment).
FIRST_HEALTHZ_LIMIT_S = 10.0
LOG_GAP_LIMIT_S = 10.0
WARM_FRACTION = 1 / 3


@dataclass(frozen=True)
class CacheVolume:
    """The named volume docker-compose.yml mounts into the service, and the service's setting that uses it."""

    name: str
    target: str
    cache_dir: str | None  # DIFFIR_CACHE_DIR in the same file

    def run_options(self, volume: str) -> list[str]:
        env = ["-e", f"DIFFIR_CACHE_DIR={self.cache_dir}"] if self.cache_dir else []
        return [f"--mount=type=volume,source={volume},target={self.target}", *env]


def compose_cache_volume() -> CacheVolume | None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = doc["services"]["diffir"]
    named = set(doc.get("volumes") or {})
    for entry in service.get("volumes") or []:
        source, target = (entry["source"], entry["target"]) if isinstance(entry, dict) else entry.split(":")[:2]
        if source in named:
            return CacheVolume(source, target, (service.get("environment") or {}).get("DIFFIR_CACHE_DIR"))
    return None


def one_start(net: str, extra: list[str], label: str) -> dict:
    container = run_detached(CPU_IMAGE, *README_RUN, "--network", net, "-p", "127.0.0.1::8000", *extra)
    try:
        timeline = watch_start(container, container.host_port(), START_LIMIT_S)
        stop_s, exit_code = container.stop(timeout_s=60)
        result = {**timeline.as_dict(), "stop_s": round(stop_s, 2), "exit_code": exit_code}
        result["log_lines"] = len(container.logs())
        log.info("%s: %s", label, {k: v for k, v in result.items() if not isinstance(v, list)})
        return result
    finally:
        Container.remove(container)


def criteria(cold: dict, warm: dict | None) -> dict:
    return {
        "first_healthz_within_10s": cold["first_healthz_200_s"] is not None
        and cold["first_healthz_200_s"] <= FIRST_HEALTHZ_LIMIT_S,
        "healthy_when_ready": cold["docker_health_at_ready"] == "healthy",
        "log_line_every_10s": cold["longest_log_gap_s"] is not None and cold["longest_log_gap_s"] <= LOG_GAP_LIMIT_S,
        "warm_ready_within_a_third_of_cold": None
        if warm is None
        else warm["first_readyz_200_s"] <= WARM_FRACTION * cold["first_readyz_200_s"],
    }


def to_markdown(r: dict) -> str:
    def s(v):
        return "—" if v is None else f"{v:.1f} s"

    m = r["machine"]
    how_built = (
        "`docker build --no-cache`"
        if r["build"]["no_cache"]
        else "layer cache allowed: torch and the locked packages reused; package, models, exported graphs rebuilt"
    )
    lines = [
        "# CPU image in a container engine",
        "",
        f"{m['cpus']} CPUs ({', '.join(m['cpu_flags']) or 'no AVX2'}), {m['platform']}; engine {m['engine']}.",
        f"Base image: {r['base_images']['python_image'] or 'python:3.11.14-slim-bookworm (Dockerfile default)'}.",
        "",
        f"Build ({how_built}, clean checkout): {r['build']['seconds']:.0f} s; "
        f"image size {r['build']['size_bytes'] / 1e6:.0f} MB. "
        f"Load average when the bench started: {m['load_average_1m']:.1f} (other work on the machine).",
        "",
        "| start | first answer | /healthz 200 | /readyz 200 | Docker healthy | health at ready | longest log gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, x in r["starts"].items():
        lines.append(
            f"| {name} | {s(x['first_answer_s'])} | {s(x['first_healthz_200_s'])} | {s(x['first_readyz_200_s'])} | "
            f"{s(x['docker_healthy_s'])} | {x['docker_health_at_ready']} | {s(x['longest_log_gap_s'])} |"
        )
    lines += ["", "Seconds after the container's StartedAt. " + r["warm_note"], "", "Docker health timeline (cold):"]
    lines += [
        f"- {h['t_s']:.1f} s: {h['status']} (failing streak {h['failing_streak']})"
        for h in r["starts"]["cold"]["health_timeline"]
    ]
    lines += ["", "| target | met |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r["criteria"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--cached-build", action="store_true", help="allow the layer cache (not a build time)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    problem = engine_problem()
    if problem:
        parser.error(problem)
    load = os.getloadavg()[0]
    build = build_image(no_cache=not args.cached_build)
    log.info("built %s in %.0f s, %.0f MB", build.tag, build.seconds, build.size_bytes / 1e6)
    starts: dict[str, dict] = {}
    volume = compose_cache_volume()
    with network(f"diffir-bench-{os.getpid()}") as net:
        starts["cold"] = one_start(net, [], "cold")
        if volume:
            name = f"diffir-bench-cache-{os.getpid()}"
            docker("volume", "rm", name, check=False)
            mount = volume.run_options(name)
            try:
                starts["cold, fresh cache volume"] = one_start(net, mount, "fresh volume")
                starts["warm, cache volume"] = one_start(net, mount, "warm")
            finally:
                docker("volume", "rm", name, check=False)
    warm = starts.get("warm, cache volume")
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_flags": cpu_flags(),
            "platform": platform.platform(),
            "engine": docker("version", "--format", "{{.Server.Version}}").stdout.strip(),
            "load_average_1m": round(load, 2),
        },
        "base_images": BaseImages.from_env().__dict__,
        "build": {"seconds": round(build.seconds, 1), "size_bytes": build.size_bytes, "no_cache": build.no_cache},
        "starts": starts,
        "warm_note": f"Warm: a second run with a volume mounted as compose's `{volume.name}` "
        f"({' '.join(volume.run_options('VOLUME'))})."
        if volume
        else "No warm start: docker-compose.yml mounts no named cache volume into the service.",
        "criteria": criteria(starts["cold"], warm),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "container.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "container.md").write_text(to_markdown(result))
    log.info("wrote %s", args.out / "container.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
