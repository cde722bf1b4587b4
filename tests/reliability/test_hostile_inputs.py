"""Every hostile input of issue 7 against the app (httpx ASGI transport, tiny random-weight models).

One app serves the whole table (`hostile.CASES`): each case must get exactly its status and error code
(or a 200 with a correct image); formats outside the allow-list must be refused before Pillow opens
anything; nothing may be a 5xx; afterwards the app is still healthy and serves a normal request.
The statuses seen are written to test-output/reliability/hostile.json (quoted in docs/reliability.md).
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter

import PIL.Image
import pytest

from tests.reliability.conftest import record
from tests.reliability.hostile import CASES, MAX_BODY, MAX_INPUT, MAX_OUTPUT, Case
from tests.service.conftest import encode, gradient, make_settings, start_app

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]


class OpenCounter:
    """Counts calls of PIL.Image.open (from any thread) while installed."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        self._real = PIL.Image.open

    def __call__(self, *args, **kwargs):
        with self._lock:
            self.calls += 1
        return self._real(*args, **kwargs)


async def _send(client, case: Case):
    content, headers = case.body()
    return await client.post(f"/restore/{case.task}", content=content, headers=headers, params=case.query)


def _judge(case: Case, response) -> str | None:
    """None when the answer is exactly the expected one, else what was wrong."""
    got = response.status_code
    if got != case.status:
        return f"status {got} (expected {case.status}): {response.text[:200]}"
    if case.status == 200:
        try:
            im = PIL.Image.open(io.BytesIO(response.content))
            im.load()
        except Exception as exc:
            return f"200 but the body is not an image: {exc!r}"
        if case.check is not None and not case.check(im):
            return f"200 but the image fails its check (mode {im.mode}, size {im.size})"
        return None
    body = response.json()
    if body.get("code") != case.code:
        return f"code {body.get('code')!r} (expected {case.code!r}): {body.get('message')}"
    if not body.get("message") or body.get("request_id") != response.headers.get("x-request-id"):
        return f"error body lacks a message or the request id: {body}"
    if got == 503 and "retry-after" not in response.headers:
        return "503 without Retry-After"
    return None


def test_the_corpus_covers_every_group() -> None:
    groups = Counter(c.group for c in CASES)
    for group in (
        "form",
        "caps",
        "sizes",
        "formats",
        "corrupt",
        "frames",
        "modes",
        "exif",
        "metadata",
        "masks",
        "query",
    ):
        assert groups[group] >= 2, (group, groups)
    assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"


async def test_hostile_inputs_get_their_exact_answers(checkpoints, monkeypatch) -> None:
    settings = make_settings(
        checkpoints, max_body_bytes=MAX_BODY, max_input_pixels=MAX_INPUT, max_output_pixels=MAX_OUTPUT, max_wait_ms=1
    )
    counter = OpenCounter()
    monkeypatch.setattr(PIL.Image, "open", counter)
    failures, table = [], []
    async for live in start_app(settings):
        for case in CASES:
            before = counter.calls
            started = time.perf_counter()
            response = await _send(live.client, case)
            ms = (time.perf_counter() - started) * 1000
            problem = _judge(case, response)
            if case.no_decoder and counter.calls != before:
                problem = (problem or "") + f" Pillow opened it ({counter.calls - before} calls)"
            if response.status_code >= 500:
                problem = (problem or "") + " a 5xx"
            if problem:
                failures.append(f"{case.name}: {problem}")
            code = None if response.status_code == 200 else response.json().get("code")
            table.append(
                {
                    "case": case.name,
                    "group": case.group,
                    "status": response.status_code,
                    "code": code,
                    "ms": round(ms, 1),
                }
            )
        # the bomb is refused from its header: far quicker than decoding 2.5 gigapixels could be
        bombs = [row["ms"] for row in table if row["case"].startswith("bomb")]
        assert max(bombs) < 2000, bombs
        # still healthy, still serving
        assert (await live.client.get("/healthz")).status_code == 200
        assert (await live.client.get("/readyz")).status_code == 200
        ok = await live.client.post(
            "/restore/deblur", content=encode(gradient(24, 16)), headers={"content-type": "image/png"}
        )
        assert ok.status_code == 200
        metrics = (await live.client.get("/metrics")).text
    assert not failures, "\n".join(failures)
    assert 'diffir_requests_total{code="500"' not in metrics
    statuses = Counter(row["status"] for row in table)
    record(
        "hostile",
        {
            "cases": len(table),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "codes": dict(Counter(row["code"] or "200" for row in table)),
            "table": table,
        },
    )
