"""Optional API key on the restore endpoints (bearer token or `X-API-Key`), compared in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from service.errors import ServiceError


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key")


def check_api_key(request: Request, expected: str | None) -> None:
    """No-op without a configured key; otherwise 401 `unauthorized` unless the key matches."""
    if expected is None:
        return
    given = presented_key(request)
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ServiceError(
            "unauthorized",
            "send the API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
