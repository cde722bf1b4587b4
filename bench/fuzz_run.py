"""A timed fuzz run against a real server: schemathesis, the hostile corpus and the request-path cases.

    .venv/bin/python -m bench.fuzz_run --minutes 10 --out bench/results

Not a test (it runs for minutes): a `python -m service` with the tiny random-weight test models is
hit in rounds until the time is up. Each round: schemathesis examples for every operation of the
OpenAPI schema (over HTTP, half of the restore cases aimed at real tasks), every case of
`tests/reliability/hostile.py`, and the request-path cases (scan bomb, chained TIFF IFDs, mid-upload
disconnects). Any 5xx (or a connection the server dropped without an answer, outside the disconnect
cases) is a finding. Results go to `<out>/fuzz_run.json` and `<out>/fuzz_run.md`.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from service.devserver import LiveServer, server_env

TASKS = ("deblur", "sr-x4", "inpaint")


def tiny_checkpoints(root: Path) -> dict[str, Path]:
    from models import save_checkpoint
    from tests.service.conftest import TINY_CONFIGS, tiny_model

    return {task: save_checkpoint(tiny_model(task), root / task, {"version": "fuzz"}) for task in TINY_CONFIGS}


def schema_round(url: str, examples: int, seed: int, statuses: Counter, findings: list[str]) -> None:
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    for result in schema.get_all_operations():
        _fuzz_operation(result.ok(), url, examples, seed, statuses, findings)


def _fuzz_operation(operation, url: str, examples: int, seed: int, statuses: Counter, findings: list[str]) -> None:
    from hypothesis import HealthCheck, Phase, given
    from hypothesis import seed as hseed
    from hypothesis import settings as hsettings

    label = f"{operation.method.upper()} {operation.path}"
    calls = {"n": 0}

    @hseed(seed)
    @given(case=operation.as_strategy())
    @hsettings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        if "task" in (case.path_parameters or {}):
            calls["n"] += 1
            if calls["n"] % 2:
                case.path_parameters["task"] = TASKS[calls["n"] // 2 % len(TASKS)]
        try:
            response = case.call(base_url=url, timeout=60)
        except Exception as exc:  # the server dropped the connection: a finding
            findings.append(f"{label}: no answer ({type(exc).__name__})")
            return
        statuses[f"{label} {response.status_code}"] += 1
        if _client_deadline_passed(case, response):  # the answer the client asked for (as tests/reliability/test_fuzz)
            statuses[f"{label} 504 (client's own timeout)"] += 1
        elif response.status_code >= 500:
            findings.append(f"{label}: {response.status_code} {response.text[:200]}")

    run()


def _client_deadline_passed(case, response) -> bool:
    """A 504 `deadline_exceeded` for a request that set its own (fuzzed, possibly 10 ms) `timeout`."""
    asked = "timeout" in (case.query or {}) or "x-request-timeout" in {k.lower() for k in (case.headers or {})}
    if not asked or response.status_code != 504:
        return False
    try:
        return response.json().get("code") == "deadline_exceeded"
    except ValueError:
        return False


def corpus_round(url: str, statuses: Counter, findings: list[str]) -> None:
    from tests.reliability.hostile import CASES

    with httpx.Client(timeout=60) as client:
        for case in CASES:
            content, headers = case.body()
            if not isinstance(content, bytes):  # streamed (chunked) bodies
                content = b"".join(_drain(content))
            try:
                r = client.post(f"{url}/restore/{case.task}", content=content, headers=headers, params=case.query)
            except httpx.HTTPError as exc:
                findings.append(f"corpus {case.name}: no answer ({type(exc).__name__})")
                continue
            statuses[f"corpus {r.status_code}"] += 1
            if r.status_code >= 500 or r.status_code != case.status:
                findings.append(f"corpus {case.name}: {r.status_code} (expected {case.status})")


def _drain(stream) -> list[bytes]:
    import asyncio

    async def collect() -> list[bytes]:
        return [piece async for piece in stream]

    return asyncio.run(collect())


def request_path_round(srv: LiveServer, statuses: Counter, findings: list[str]) -> None:
    from tests.reliability.hostile import tiff_chained_ifds
    from tests.reliability.scan_bomb import scan_bomb

    for name, data, ctype in (
        ("scan bomb", scan_bomb(1024, 1_000_000), "image/jpeg"),
        ("chained TIFF IFDs", tiff_chained_ifds(40_000), "image/tiff"),
    ):
        r = httpx.post(f"{srv.url}/restore/deblur", content=data, headers={"content-type": ctype}, timeout=60)
        statuses[f"{name} {r.status_code}"] += 1
        if r.status_code >= 500:
            findings.append(f"{name}: {r.status_code}")
    for _ in range(10):  # clients that leave mid-upload
        sock = socket.create_connection(("127.0.0.1", srv.port))
        head = "POST /restore/deblur HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 20000\r\n\r\n"
        sock.sendall(head.encode() + b"\0" * 10000)
        sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--examples", type=int, default=25, help="schemathesis examples per operation per round")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    statuses: Counter = Counter()
    findings: list[str] = []
    rounds = 0
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = tiny_checkpoints(Path(tmp))
        env = server_env(
            DIFFIR_TASKS=json.dumps({name: {"checkpoint": str(path)} for name, path in ckpts.items()}),
            DIFFIR_WARMUP_SIZE="16",
            DIFFIR_MAX_BODY_BYTES="1000000",
            DIFFIR_MAX_INPUT_PIXELS=str(512 * 512),
            DIFFIR_MAX_OUTPUT_PIXELS=str(512 * 512),
            DIFFIR_BACKEND="torch",  # eager: no start-up timing of backend candidates
            DIFFIR_LOG_LEVEL="warning",
        )
        started = time.monotonic()
        with LiveServer(env) as srv:
            while time.monotonic() - started < args.minutes * 60:
                schema_round(srv.url, args.examples, rounds, statuses, findings)
                corpus_round(srv.url, statuses, findings)
                request_path_round(srv, statuses, findings)
                rounds += 1
            five_hundreds = srv.metric("diffir_requests_total", code="500", task="deblur")
            ready = httpx.get(f"{srv.url}/readyz").status_code
        elapsed = time.monotonic() - started
    report = {
        "minutes": round(elapsed / 60, 1),
        "rounds": rounds,
        "requests": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items())),
        "findings": findings[:200],
        "requests_total_500_deblur": five_hundreds,
        "readyz_after": ready,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz_run.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Fuzz run (bench/fuzz_run.py)",
        "",
        f"{report['minutes']} min, {rounds} rounds, {report['requests']} requests against `python -m service` "
        "(tiny random-weight models, 2 shared cores).",
        "",
        f"Findings (5xx or no answer, or a corpus case off its expected answer): **{len(findings)}**; "
        f'`diffir_requests_total{{code="500"}}` at the end: {five_hundreds:g}; `/readyz` after: {ready}.',
        "",
        *[f"- {f}" for f in findings[:50]],
    ]
    (args.out / "fuzz_run.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
