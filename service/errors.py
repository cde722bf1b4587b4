"""Every error the service returns: one exception type with a stable machine-readable code.

Handlers and helpers raise `ServiceError`; the app turns it into
`{"code": ..., "message": ..., "request_id": ...}` with the right HTTP status. Keeping the codes in
one table makes them easy to document, to test one by one, and to keep stable for clients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi.responses import JSONResponse


@dataclass(frozen=True)
class ErrorKind:
    code: str
    status: int
    summary: str


# The stable codes (documented in README "## Service errors"); status first, then the code.
ERRORS: dict[str, ErrorKind] = {
    e.code: e
    for e in (
        ErrorKind("bad_request", 400, "the HTTP request itself could not be parsed (framing)"),
        ErrorKind("bad_multipart", 400, "the multipart body could not be parsed"),
        ErrorKind("unauthorized", 401, "missing or wrong API key"),
        ErrorKind("unknown_task", 404, "no such task is configured"),
        ErrorKind("not_found", 404, "no such path"),
        ErrorKind("method_not_allowed", 405, "method not allowed on this path"),
        ErrorKind("request_timeout", 408, "the request headers or body did not arrive in time"),
        ErrorKind("body_too_large", 413, "the request body exceeds the byte cap"),
        ErrorKind("too_many_pixels", 413, "the input image exceeds the pixel cap"),
        ErrorKind("output_too_large", 413, "the output image would exceed the output pixel cap"),
        ErrorKind("icc_profile_too_large", 413, "the embedded ICC profile exceeds the profile size cap"),
        ErrorKind("decode_too_large", 413, "decoding the image needs more memory than its budget"),
        ErrorKind("unsupported_media_type", 415, "the body is neither multipart/form-data nor image/*"),
        ErrorKind("unsupported_encoding", 415, "compressed request bodies are not accepted"),
        ErrorKind("unsupported_format", 415, "the image format is not on the allow-list"),
        ErrorKind("missing_image", 422, "no `image` part / empty body"),
        ErrorKind("duplicate_part", 422, "a form field was sent more than once"),
        ErrorKind("unexpected_field", 422, "a form field this task does not take"),
        ErrorKind("undecodable_image", 422, "the image is truncated or corrupt"),
        ErrorKind("multi_frame_image", 422, "animated or multi-page images are not accepted"),
        ErrorKind(
            "decode_too_slow",
            422,
            "the image is too costly to decode (time budget, scan count, header flood)",
        ),
        ErrorKind("non_finite_image", 422, "the image holds NaN or infinite sample values"),
        ErrorKind("shape_too_costly", 422, "the image is so thin that padding it multiplies the model's work"),
        ErrorKind("missing_mask", 422, "the task needs a `mask` part"),
        ErrorKind("bad_mask", 422, "the mask is undecodable or not the image's size"),
        ErrorKind("bad_parameter", 422, "a query parameter is invalid"),
        ErrorKind("headers_too_large", 431, "the request headers exceed the size or count cap"),
        ErrorKind("client_closed_request", 499, "the client went away while the request was queued"),
        ErrorKind("internal_error", 500, "the model failed on this batch (or returned non-finite values)"),
        ErrorKind("queue_full", 503, "the task's queue is full; retry after Retry-After seconds"),
        ErrorKind("too_many_connections", 503, "the server holds its cap of open connections; retry later"),
        ErrorKind("busy", 503, "uploads in flight hold the byte budget; retry after Retry-After seconds"),
        ErrorKind("out_of_memory", 503, "the device ran out of memory even for this request alone"),
        ErrorKind("device_failed", 503, "the accelerator is in an unrecoverable state; the process must restart"),
        ErrorKind("draining", 503, "the server is shutting down"),
        ErrorKind("not_ready", 503, "the server is starting (its models are loading); retry after Retry-After seconds"),
        ErrorKind("deadline_exceeded", 504, "the request was not served within the deadline"),
    )
}


@dataclass
class ServiceError(Exception):
    """Raised anywhere in the request path; carries the stable code and a human message."""

    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    counted: bool = False
    """Already counted in `diffir_rejected_total` by the layer that refused it (the batchers count theirs)."""

    def __post_init__(self) -> None:
        if self.code not in ERRORS:
            raise ValueError(f"undeclared error code {self.code!r}")
        super().__init__(self.message)

    @property
    def status(self) -> int:
        return ERRORS[self.code].status

    def body(self, request_id: str | None) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "request_id": request_id}


_HEAP_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    """`Type: text` for an error message sent to clients: heap addresses removed, length bounded."""
    text = _HEAP_ADDRESS.sub("", f"{type(exc).__name__}: {exc}")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_response(err: ServiceError, request_id: str | None) -> JSONResponse:
    """The JSON answer for an error: `{"code", "message", "request_id"}` with its status and headers."""
    from fastapi.responses import JSONResponse

    return JSONResponse(err.body(request_id), status_code=err.status, headers=err.headers)


class StartupError(RuntimeError):
    """A configuration or model-file problem that must stop start-up with one clear line."""
