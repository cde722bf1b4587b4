"""HTTP details a client or a fuzzer trips over (in-process, identity models).

Old behaviour: `MULTIPART/FORM-DATA; BOUNDARY=B` got 400 "without a boundary parameter" (parameter
names are case-insensitive); `timeout=1_0` and `X-Request-Timeout: 1_0` were read as 10 s;
`timeout=abc&timeout=5` was accepted; 405 answers had no `Allow` header.
"""

from __future__ import annotations

import pytest

from service.settings import Settings
from tests.service.conftest import encode, gradient, identity_backends, start_app

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
PNG = {"content-type": "image/png"}


def settings() -> Settings:
    return Settings(warmup_size=0, max_wait_ms=1, tasks={"deblur": {}})  # type: ignore[arg-type]


def form(boundary: str, data: bytes) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


async def test_multipart_media_type_and_boundary_names_in_any_case() -> None:
    async for live in start_app(settings(), backends=identity_backends()):
        png = encode(gradient(16, 16))
        for content_type in ("MULTIPART/FORM-DATA; BOUNDARY=B", 'Multipart/Form-Data; Boundary="B"'):
            r = await live.client.post(
                "/restore/deblur", content=form("B", png), headers={"content-type": content_type}
            )
            assert r.status_code == 200, (content_type, r.text[:200])
        r = await live.client.post(
            "/restore/deblur", content=form("B", png), headers={"content-type": "multipart/form-data; charset=x"}
        )
        assert r.status_code == 400 and r.json()["code"] == "bad_multipart"


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"timeout": "1_0"}, {}),
        ({}, {"X-Request-Timeout": "1_0"}),
        ({}, {"X-Request-Timeout": "1e1"}),
        ([("timeout", "abc"), ("timeout", "5")], {}),
        ([("timeout", "5"), ("timeout", "5")], {}),
    ],
)
async def test_client_timeouts_are_strict_decimal_and_given_once(params, headers) -> None:
    async for live in start_app(settings(), backends=identity_backends()):
        r = await live.client.post(
            "/restore/deblur", params=params, content=encode(gradient(16, 16)), headers={**PNG, **headers}
        )
        assert r.status_code == 422 and r.json()["code"] == "bad_parameter", r.text[:200]


async def test_405_answers_name_every_allowed_method() -> None:
    async for live in start_app(settings(), backends=identity_backends()):
        c = live.client
        r = await c.get("/restore/deblur")
        assert r.status_code == 405 and r.headers["allow"] == "POST", dict(r.headers)
        r = await c.delete("/healthz")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD", dict(r.headers)
        r = await c.post("/tasks")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        assert r.json()["code"] == "method_not_allowed"
