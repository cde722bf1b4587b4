"""A restoration's parameters (seed, format, quality, timeout) and their rules, defined once.

The HTTP route (query string and the `X-Request-Timeout` header) and `diffir-restore` (its command
line) hand the text they were given to `parse_params`, so the CLI refuses exactly what the server
refuses, with the same code (`bad_parameter`) and the same message. Text, not pre-converted values:
`seed=1.0`, `+5`, `1_000` or `1e400` would pass Python's or pydantic's conversions, and a 20-digit
seed is a valid Python int that only fails deep inside the generator.

Only the standard library and `service.errors`: a client-only install (`diffir-restore --server`)
checks its parameters before it sends anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.errors import ServiceError

MAX_SEED = 2**63 - 1
"""Seeds become the state of a 64-bit signed generator (`torch.Generator.manual_seed`)."""
MIN_QUALITY, MAX_QUALITY = 1, 100
OUTPUT_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
"""Output formats a request may ask for, with their media types."""
TIMEOUT_HEADER = "X-Request-Timeout"
MIN_TIMEOUT_S = 0.01
"""A client deadline shorter than 10 ms cannot be met by any restoration (decoding alone takes longer):
such a value is a malformed request (422), not a deadline to miss (504)."""
MAX_TIMEOUT_S = 86400.0
NAMES = ("seed", "format", "quality", "timeout")

_INTEGER = re.compile(r"[0-9]{1,19}")
"""Plain decimal digits; 19 of them hold any value up to MAX_SEED (longer is refused before int())."""
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,20})?")
"""Plain decimal seconds: no sign, exponent, `inf` or `nan`."""


@dataclass(frozen=True)
class RestoreParams:
    seed: int = 0
    format: str | None = None
    """None: the service's default (PNG, or JPEG for a JPEG input)."""
    quality: int | None = None
    timeout_s: float | None = None
    """The client's own deadline; the server's deadline still caps it."""


def _bad(name: str, text: str, rule: str) -> ServiceError:
    return ServiceError("bad_parameter", f"{name}: {text[:40]!r} is not {rule}")


def parse_seed(text: str) -> int:
    if not _INTEGER.fullmatch(text) or int(text) > MAX_SEED:
        raise _bad("seed", text, f"a plain decimal integer in [0, {MAX_SEED}]")
    return int(text)


def parse_quality(text: str) -> int:
    if not _INTEGER.fullmatch(text) or not MIN_QUALITY <= int(text) <= MAX_QUALITY:
        raise _bad("quality", text, f"a plain decimal integer in [{MIN_QUALITY}, {MAX_QUALITY}]")
    return int(text)


def parse_format(text: str) -> str:
    if text not in OUTPUT_FORMATS:
        raise _bad("format", text, f"one of {', '.join(OUTPUT_FORMATS)}")
    return text


def parse_timeout(text: str, name: str = "timeout") -> float:
    value = float(text) if _SECONDS.fullmatch(text) else math.nan
    if not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:  # nan (not decimal) fails too
        raise _bad(name, text, f"a plain decimal number of seconds in [{MIN_TIMEOUT_S:g}, {MAX_TIMEOUT_S:g}]")
    return value


def parse_params(given: Mapping[str, Sequence[str]], timeout_header: str | None = None) -> RestoreParams:
    """`given`: each parameter's values as text (a query string may repeat a name: refused, as it is
    ambiguous). The `timeout` parameter wins over the header, which is checked only when it is used."""
    for name, values in given.items():
        if len(values) > 1:
            raise ServiceError("bad_parameter", f"{name}: given {len(values)} times; give it once")
    one = {name: values[0] for name, values in given.items() if values}
    timeout_s = None
    if "timeout" in one:
        timeout_s = parse_timeout(one["timeout"])
    elif timeout_header is not None:
        timeout_s = parse_timeout(timeout_header, TIMEOUT_HEADER)
    return RestoreParams(
        seed=parse_seed(one["seed"]) if "seed" in one else 0,
        format=parse_format(one["format"]) if "format" in one else None,
        quality=parse_quality(one["quality"]) if "quality" in one else None,
        timeout_s=timeout_s,
    )


def openapi_parameters() -> list[dict]:
    """The query parameters as OpenAPI documents them, from the same constants the parser uses."""

    def query(name: str, schema: dict, description: str) -> dict:
        return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}

    return [
        query(
            "seed",
            {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "default": 0},
            "noise seed; same input + seed -> same bytes",
        ),
        query(
            "format",
            {"type": "string", "enum": list(OUTPUT_FORMATS)},
            "output format (default: PNG, JPEG for a JPEG input)",
        ),
        query("quality", {"type": "integer", "minimum": MIN_QUALITY, "maximum": MAX_QUALITY}, "JPEG/WebP quality"),
        query(
            "timeout",
            {"type": "number", "minimum": MIN_TIMEOUT_S, "maximum": MAX_TIMEOUT_S},
            f"seconds this request may take (also the `{TIMEOUT_HEADER}` header); the server's deadline caps "
            "it; 504 `deadline_exceeded` past it",
        ),
    ]
