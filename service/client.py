"""A small Python client for a running diffir-serve (httpx; sync `Client` and async `AsyncClient`).

    from service.client import Client
    with Client("http://127.0.0.1:8000") as c:
        png = c.restore("deblur", "blurry.jpg", seed=0, format="png")

Errors come back as `ClientError` carrying the server's stable `code`, the HTTP status and the
request id, so callers can branch on `err.code == "queue_full"` and honour `err.retry_after`.

It needs only httpx: `pip install diffir-serve` (no extras) installs it and `diffir-restore --server URL`
without torch or the models (tests/test_packaging.py proves it in a fresh virtualenv).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ImageInput = bytes | str | Path


class ClientError(Exception):
    def __init__(self, status: int, code: str, message: str, request_id: str | None, retry_after: float | None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.request_id, self.retry_after = request_id, retry_after


@dataclass
class Restored:
    """The restored image bytes plus what the server said about producing them."""

    data: bytes
    content_type: str
    request_id: str | None
    server_timing: str | None


def _read(value: ImageInput) -> tuple[str, bytes]:
    if isinstance(value, bytes):
        return "image", value
    path = Path(value)
    return path.name, path.read_bytes()


def _request_parts(
    image: ImageInput,
    mask: ImageInput | None,
    seed: int,
    format: str | None,
    quality: int | None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    files = {"image": _read(image)}
    if mask is not None:
        files["mask"] = _read(mask)
    params: dict[str, Any] = {"seed": seed}
    if format:
        params["format"] = format
    if quality is not None:
        params["quality"] = quality
    if timeout_s is not None:
        params["timeout"] = timeout_s
    return {
        "files": {k: (name, data, "application/octet-stream") for k, (name, data) in files.items()},
        "params": params,
    }


def _result(response: httpx.Response) -> Restored:
    if response.status_code != 200:
        try:
            body = response.json()
        except ValueError:
            body = {"code": "http_error", "message": response.text[:200]}
        retry = response.headers.get("retry-after")
        raise ClientError(
            response.status_code,
            str(body.get("code")),
            str(body.get("message")),
            response.headers.get("x-request-id"),
            float(retry) if retry else None,
        )
    return Restored(
        response.content,
        response.headers.get("content-type", ""),
        response.headers.get("x-request-id"),
        response.headers.get("server-timing"),
    )


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client:
    """Synchronous client."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 120):
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def restore(
        self,
        task: str,
        image: ImageInput,
        *,
        mask: ImageInput | None = None,
        seed: int = 0,
        format: str | None = None,
        quality: int | None = None,
        timeout_s: float | None = None,
    ) -> Restored:
        """`timeout_s`: this request's own deadline on the server (504 `deadline_exceeded` past it)."""
        parts = _request_parts(image, mask, seed, format, quality, timeout_s)
        return _result(self._http.post(f"/restore/{task}", **parts))

    def tasks(self) -> list[dict[str, Any]]:
        return self._http.get("/tasks").raise_for_status().json()["tasks"]

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200


class AsyncClient:
    """Asynchronous client (same methods, awaitable)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 120,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def restore(
        self,
        task: str,
        image: ImageInput,
        *,
        mask: ImageInput | None = None,
        seed: int = 0,
        format: str | None = None,
        quality: int | None = None,
        timeout_s: float | None = None,
    ) -> Restored:
        """`timeout_s`: this request's own deadline on the server (504 `deadline_exceeded` past it)."""
        parts = _request_parts(image, mask, seed, format, quality, timeout_s)
        return _result(await self._http.post(f"/restore/{task}", **parts))

    async def tasks(self) -> list[dict[str, Any]]:
        return (await self._http.get("/tasks")).raise_for_status().json()["tasks"]

    async def ready(self) -> bool:
        return (await self._http.get("/readyz")).status_code == 200
