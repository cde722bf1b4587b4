"""Read a request body under a byte cap and split it into the image (and mask) bytes.

The cap is enforced twice: from `Content-Length` before reading anything, and while streaming
(chunked bodies, lying headers). Compressed bodies (`Content-Encoding: gzip`, ...) are refused
outright, so nothing can inflate past the cap. Multipart bodies are parsed only after the
bounded read, with small limits on the number of parts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from service.errors import ServiceError

MAX_PARTS = 8


async def read_body(request: Request, max_bytes: int) -> bytes:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ServiceError("unsupported_encoding", f"Content-Encoding {encoding!r} is not accepted; send the raw bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ServiceError("bad_multipart", f"invalid Content-Length {declared!r}") from None
        if length > max_bytes:
            raise ServiceError("body_too_large", f"the body has {length} bytes; the cap is {max_bytes}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise ServiceError("body_too_large", f"the body exceeds the cap of {max_bytes} bytes")
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
    if "boundary=" not in headers.get("content-type", ""):
        raise ServiceError("bad_multipart", "multipart/form-data without a boundary parameter")
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
