"""uvicorn's httptools protocol plus the two things it lacks: a header timeout and JSON framing errors.

uvicorn (0.54) times out only idle keep-alive connections *after* a response: a connection that
opens and sends nothing, or sends headers one byte at a time, stays open for ever (slowloris). This
protocol arms a timer when a connection opens and after every response; headers not complete
when it fires get 408 `request_timeout` and the connection is closed. Body timeouts are the
app's (`service.bodies`), which can answer them in JSON. uvicorn's own 400 for unparseable HTTP is
plain text; here it is the service's JSON error body with the code `bad_request`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _response(status_line: bytes, code: str, message: str) -> bytes:
    body = json.dumps({"code": code, "message": message, "request_id": None}).encode()
    head = status_line + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % len(body) + body


class TimedHttpProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm()  # the next request's headers get the same time

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        message = f"the request headers were not complete within {self.header_timeout_s:g} s"
        self.transport.write(_response(b"HTTP/1.1 408 Request Timeout\r\n", "request_timeout", message))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_response(b"HTTP/1.1 400 Bad Request\r\n", "bad_request", msg))
        self.transport.close()


def protocol_with_timeout(header_timeout_s: float) -> type[TimedHttpProtocol]:
    """A subclass bound to this server's header timeout (uvicorn instantiates the class itself)."""
    return type("TimedHttpProtocol", (TimedHttpProtocol,), {"header_timeout_s": header_timeout_s})
