"""Admission's view of an upload: its header, read from a bounded prefix in the server process.

The server process never walks a whole upload: admission parses at most the first `PREFIX_BYTES`
(enough for the format and the dimensions of nearly every real file), where the structural caps of
`service.imaging.containers` bound the walk to milliseconds. When the header lies beyond that prefix
(a JPEG carrying a large ICC profile or XMP packet before its frame, a TIFF whose directory sits at the
end, a WebP over the prefix), the header is read in a decode worker instead: a killable process with
its time budget, memory limit and pool size, cancelled when the client leaves.

A refusal found in the prefix is final when the rest of the file cannot undo it (too many pixels, a
second frame, a flood already past its cap); a prefix that merely ends too early ("truncated") is not
a refusal and goes to the worker.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from service.errors import ServiceError
from service.imaging.decode import DecodeLimits, ImageHeader, read_header
from service.intake.decoding import DecodePool, DecodeTimeout, WorkerCrashed

PREFIX_BYTES = 256 * 1024
"""Bytes of an upload admission may parse in the server process."""
WORKER_BUDGET_S = 2.0
"""Time a decode worker gets to read a header that lies beyond the prefix (real ones take milliseconds)."""
_NOT_FINAL = {"image": "undecodable_image", "mask": "bad_mask"}
"""The codes a cut-off prefix can cause (its parser hit the end): the whole file decides them."""


def prefix_header(data: bytes, limits: DecodeLimits, what: str) -> ImageHeader | None:
    """The header if the first `PREFIX_BYTES` hold it; None when only the whole file can tell.

    Raises `ServiceError` for every refusal the prefix already settles (and for any refusal at all
    when the prefix is the whole file)."""
    if len(data) <= PREFIX_BYTES:
        return read_header(data, limits, what)
    try:
        return read_header(data[:PREFIX_BYTES], limits, what)
    except ServiceError as err:
        if err.code == _NOT_FINAL[what]:
            return None
        raise


async def upload_header(
    data: bytes, limits: DecodeLimits, what: str, pool: DecodePool, budget_s: float = WORKER_BUDGET_S
) -> ImageHeader:
    """The header of one upload (image or mask): from the prefix in a thread, else from a decode worker."""
    header = await run_in_threadpool(prefix_header, data, limits, what)
    if header is not None:
        return header
    try:
        found, _warnings = await pool.run("header", (data, limits, what), budget_s)
    except DecodeTimeout:
        code = "decode_too_slow" if what == "image" else "bad_mask"
        raise ServiceError(code, f"the {what}'s header could not be read within {budget_s:.3g} s") from None
    except WorkerCrashed:
        raise ServiceError("decode_too_large", f"reading the {what}'s header exceeded the decoder's memory") from None
    return found
