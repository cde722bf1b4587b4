"""uvicorn's httptools protocol plus the connection budgets it lacks, each answered in JSON.

- **Header timeout** (408 `request_timeout`): uvicorn times out only idle keep-alive connections
  *after* a response, so a connection that opens and sends nothing, or sends headers one byte at a
  time, would stay open for ever (slowloris). A timer runs from the connection's start and after
  every response until the next request's headers are complete.
- **Header size and count** (431 `headers_too_large`): httptools buffers a header field until it is
  complete and uvicorn keeps every field, so 6 million `a:b` fields cost 590 MB and a single 100 MB
  field 100 MB. The bytes received while a request's headers are incomplete are counted (a field
  still being buffered included), and so are the fields; past either cap the request is refused
  before the app sees it.
- **Connection cap** (503 `too_many_connections`): a connection opened while `max_connections` are
  open is answered at once with 503 and `Retry-After`, then closed, so descriptors stay bounded and a
  client learns why instead of meeting a reset at the process's descriptor limit.
- uvicorn's own 400 for unparseable HTTP is plain text; here it is JSON with the code `bad_request`.

Refused connections linger for at most `LINGER_S` after the answer (written half-closed, the rest of
the client's bytes read and dropped), so a client still sending can read its answer rather than a
reset. Every refusal is reported to `refused(code)` (`diffir_rejected_total{task="_unknown"}`).
Body timeouts are the app's (`service.http.bodies`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import ERRORS

LINGER_S = 0.5
"""How long a refused connection is kept (half-closed, input dropped) so the client can read its answer."""
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-connection budgets (`DIFFIR_HEADER_TIMEOUT_S`, `_MAX_HEADER_BYTES`, `_MAX_HEADER_COUNT`,
    `_MAX_CONNECTIONS`, `_RETRY_AFTER_S`)."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    max_header_count: int = 100
    max_connections: int = 1000
    retry_after_s: int = 1

    @classmethod
    def from_settings(cls, settings: Any) -> ConnectionLimits:
        return cls(
            settings.header_timeout_s,
            settings.max_header_bytes,
            settings.max_header_count,
            settings.max_connections,
            settings.retry_after_s,
        )


def _response(code: str, message: str, extra: bytes = b"") -> bytes:
    status = ERRORS[code].status
    body = json.dumps({"code": code, "message": message, "request_id": None}).encode()
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n"
    return head % (status, _REASONS[status], len(body), extra) + body


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; uvicorn turns it into `send_400_response`."""


class GuardedHttpProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    refused: ClassVar[Callable[[str], None]] = staticmethod(lambda code: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_headers = True  # until the first request's headers are complete
        self._header_bytes = 0  # bytes received while the current request's headers are incomplete
        self._fields = 0
        self._field_bytes = 0
        self._answered = 0
        self._refusal: tuple[str, str] | None = None
        self._lingering = False

    # --- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.limits.max_connections
        if len(self.connections) > cap:
            retry = b"retry-after: %d\r\n" % self.limits.retry_after_s
            self._refuse("too_many_connections", f"the server holds its cap of {cap} open connections", retry)
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # a refused connection: its remaining bytes are dropped
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._in_headers and self._header_bytes > self.limits.max_header_bytes and not self._lingering:
            self._refuse("headers_too_large", f"the request headers exceed {self.limits.max_header_bytes} bytes")

    # --- parser callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._fields = self._field_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._field_bytes += len(url)
        self._check_fields()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._field_bytes += len(name) + len(value) + 4
        self._check_fields()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_headers = False
        self._header_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers = True  # whatever arrives next is the next request's headers

    def on_response_complete(self) -> None:
        self._answered += 1
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm()  # the next request's headers get the same time

    def _check_fields(self) -> None:
        lim = self.limits
        if self._fields > lim.max_header_count:
            self._refusal = ("headers_too_large", f"the request has more than {lim.max_header_count} header fields")
            raise _Refused
        if self._field_bytes > lim.max_header_bytes:
            self._refusal = ("headers_too_large", f"the request headers exceed {lim.max_header_bytes} bytes")
            raise _Refused

    # --- answers ---------------------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self._lingering:
            return
        message = f"the request headers were not complete within {self.limits.header_timeout_s:g} s"
        # an idle keep-alive connection that never began another request is answered but not counted
        self._refuse("request_timeout", message, count=self._answered == 0 or self._header_bytes > 0)

    def send_400_response(self, msg: str) -> None:
        if self._lingering:
            return
        code, message = self._refusal or ("bad_request", msg)
        self._refuse(code, message)

    def _refuse(self, code: str, message: str, extra: bytes = b"", *, count: bool = True) -> None:
        """Answer `code` in JSON, stop reading requests, and close after the client read it (or `LINGER_S`)."""
        self._disarm()
        self._lingering = True
        if count:
            self.refused(code)
        if self.transport.is_closing():
            return
        self.transport.write(_response(code, message, extra))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def protocol_for(limits: ConnectionLimits, refused: Callable[[str], None] = lambda code: None) -> type:
    """A subclass bound to this server's limits and refusal counter (uvicorn instantiates the class itself)."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits, "refused": staticmethod(refused)})
