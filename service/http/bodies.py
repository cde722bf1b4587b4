"""Read a request body under a byte cap, a time limit and a shared byte budget; split it into parts.

The cap is enforced twice: from `Content-Length` before reading anything, and while streaming
(chunked bodies, lying headers). Compressed bodies (`Content-Encoding: gzip`, ..., or a transfer
coding other than `chunked`) are refused outright, so nothing can inflate past the cap. A body that stalls (nothing for
`body_idle_timeout_s`) or drags (not complete within `body_timeout_s`) gets 408; a client that
leaves mid-body is `ClientGone` (499, never a 500). Every byte held by an upload being read or
decoded is reserved in the process-wide `UploadBudget` first, so stalled uploads cannot pin
unbounded memory: past the budget a request gets 503 `busy`. Multipart bodies are parsed only
after the bounded read, with at most 8 file parts and 8 plain fields, and must end with their
closing delimiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from service.errors import ServiceError

MAX_PARTS = 8
"""At most this many file parts, and separately this many plain fields, in one multipart body."""


class ClientGone(Exception):
    """The client closed the connection before its answer (HTTP 499, counted as `disconnected`)."""


class UploadBudget:
    """Bytes held by all uploads in flight; `reserve` refuses past the cap (503 `busy`)."""

    def __init__(self, cap: int, report: Callable[[float], None] = lambda n: None) -> None:
        self.cap = cap
        self.held = 0
        self._report = report

    def reserve(self, n: int, retry_after_s: int) -> None:
        if self.held + n > self.cap:
            raise ServiceError(
                "busy",
                f"uploads in flight hold {self.held} of {self.cap} bytes; this one needs {n} more",
                {"Retry-After": str(retry_after_s)},
            )
        self.held += n
        self._report(self.held)

    def release(self, n: int) -> None:
        self.held -= n
        self._report(self.held)


@dataclass
class BodyLimits:
    max_bytes: int
    timeout_s: float
    idle_timeout_s: float
    retry_after_s: int


class Upload:
    """One request's reservation in the budget; `release()` is idempotent."""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget = budget
        self.held = 0

    def reserve(self, n: int, retry_after_s: int) -> None:
        self.budget.reserve(n, retry_after_s)
        self.held += n

    def release(self) -> None:
        if self.held:
            self.budget.release(self.held)
            self.held = 0


def _timeout(message: str) -> ServiceError:
    return ServiceError("request_timeout", message, {"Connection": "close"})


def check_codings(headers: Headers) -> None:
    """415 `unsupported_encoding` for a compressed body: any `Content-Encoding` but identity, and any transfer
    coding but `chunked` (`Transfer-Encoding: gzip, chunked` would otherwise be de-chunked and its gzip
    ignored). RFC 9112 suggests 501 for a transfer coding a server does not implement; the refusal is the
    client's to fix, so it gets the same 4xx as a compressed `Content-Encoding`."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ServiceError("unsupported_encoding", f"Content-Encoding {encoding!r} is not accepted; send the raw bytes")
    codings = [c.strip().lower() for value in headers.getlist("transfer-encoding") for c in value.split(",")]
    if any(c != "chunked" for c in codings):
        raise ServiceError(
            "unsupported_encoding",
            f"Transfer-Encoding {', '.join(codings)!r} is not accepted; only `chunked` (send the raw bytes)",
        )


async def read_body(request: Request, limits: BodyLimits, upload: Upload) -> bytes:
    check_codings(request.headers)
    declared = request.headers.get("content-length")
    max_bytes = limits.max_bytes
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ServiceError("bad_multipart", f"invalid Content-Length {declared!r}") from None
        if length > max_bytes:
            raise ServiceError("body_too_large", f"the body has {length} bytes; the cap is {max_bytes}")
        upload.reserve(length, limits.retry_after_s)
    loop = asyncio.get_running_loop()
    ends = loop.time() + limits.timeout_s
    chunks, total = [], 0
    stream = request.stream().__aiter__()
    while True:
        wait = min(limits.idle_timeout_s, ends - loop.time())
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(wait, 0.0))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            if loop.time() >= ends:
                raise _timeout(f"the body was not complete within {limits.timeout_s:g} s") from None
            raise _timeout(f"the body sent nothing for {limits.idle_timeout_s:g} s") from None
        except ClientDisconnect:
            raise ClientGone("the client closed the connection during the upload") from None
        total += len(chunk)
        if total > max_bytes:
            raise ServiceError("body_too_large", f"the body exceeds the cap of {max_bytes} bytes")
        if declared is None or total > upload.held:
            upload.reserve(len(chunk) if declared is None else total - upload.held, limits.retry_after_s)
        chunks.append(chunk)
    return b"".join(chunks)


async def _replay(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def split_body(headers: Headers, body: bytes, needs_mask: bool) -> tuple[bytes, bytes | None]:
    """(image bytes, mask bytes or None) from a multipart or raw `image/*` body."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _split_multipart(headers, body, needs_mask)
    if content_type.startswith("image/"):
        if not body:
            raise ServiceError("missing_image", "the body is empty")
        if needs_mask:
            raise ServiceError(
                "missing_mask", "this task needs a mask: send multipart/form-data with `image` and `mask`"
            )
        return body, None
    raise ServiceError(
        "unsupported_media_type",
        f"Content-Type {content_type or '(none)'!r}: send multipart/form-data (field `image`) or a raw image/* body",
    )


async def _split_multipart(headers: Headers, body: bytes, needs_mask: bool) -> tuple[bytes, bytes | None]:
    _, params = parse_options_header(headers.get("content-type", ""))  # parameter names in any case
    boundary = params.get(b"boundary", b"")
    if not boundary:
        raise ServiceError("bad_multipart", "multipart/form-data without a boundary parameter")
    if b"--" + boundary + b"--" not in body:
        raise ServiceError("bad_multipart", "the multipart body has no closing delimiter (truncated?)")
    parser = MultiPartParser(headers, _replay(body), max_files=MAX_PARTS, max_fields=MAX_PARTS)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServiceError("bad_multipart", f"malformed multipart body: {exc.message}") from None
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise ServiceError("bad_multipart", f"malformed multipart body ({type(exc).__name__})") from None
    try:
        allowed = {"image", "mask"} if needs_mask else {"image"}
        parts: dict[str, bytes] = {}
        for name, value in form.multi_items():
            if name not in allowed:
                raise ServiceError(
                    "unexpected_field", f"unexpected form field {name!r}; this task takes {sorted(allowed)}"
                )
            if name in parts:
                raise ServiceError("duplicate_part", f"the form field {name!r} was sent more than once")
            if not isinstance(value, UploadFile):
                raise ServiceError(
                    "missing_image" if name == "image" else "bad_mask",
                    f"`{name}` must be a file part (with a filename)",
                )
            parts[name] = await value.read()
        if not parts.get("image"):
            raise ServiceError("missing_image", "the form has no (or an empty) `image` file part")
        if needs_mask and "mask" not in parts:
            raise ServiceError("missing_mask", "this task needs a `mask` file part (white = hole)")
        return parts["image"], parts.get("mask")
    finally:
        await form.close()
