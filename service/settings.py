r"""Service settings: environment variables with the prefix `DIFFIR_`, validated once at start-up.

Every setting (environment variable, default, meaning):

| variable | default | meaning |
|---|---|---|
| `DIFFIR_HOST` | `127.0.0.1` | address to bind (`python -m service --host` overrides) |
| `DIFFIR_PORT` | `8000` | port to bind (`--port` overrides) |
| `DIFFIR_API_KEY` | unset | when set, `POST /restore/*` needs `Authorization: Bearer <key>` or `X-API-Key: <key>` |
| `DIFFIR_DEVICE` | `auto` | `auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N` |
| `DIFFIR_BACKEND` | `auto` | `auto` (fastest candidate within 45 dB of fp32), `torch`, `torchscript`, `onnxruntime` |
| `DIFFIR_PRECISION` | unset | `fp32`, `bf16`, `fp16` for torch (CPU: autocast); unset: fp32, or what `auto` picks |
| `DIFFIR_CACHE_DIR` | unset | writable folder for first-use exports and `auto` choices (unset: XDG cache, else temp) |
| `DIFFIR_PREPARED_DIR` | unset | read-only exports built ahead by `python -m service prepare` (the images set it) |
| `DIFFIR_AUTOTUNE_SIZE` | `256` | output edge of the synthetic input `auto` times the candidates on |
| `DIFFIR_TORCH_THREADS` | unset | intra-op threads, torch and ONNX Runtime (unset: the CPU limit, else the default) |
| `DIFFIR_MAX_BATCH_SIZE` | auto | most requests per model call; unset: 8 on CUDA, 1 on CPU (batching is slower there) |
| `DIFFIR_MAX_WAIT_MS` | `5` | how long the oldest queued request waits for others to join its batch |
| `DIFFIR_QUEUE_SIZE` | `32` | queued requests per task; beyond it: 503 `queue_full` with `Retry-After` |
| `DIFFIR_MAX_QUEUED_PIXELS` | `67108864` | queued work per task, padded area × scale²; 503 `queue_full` beyond |
| `DIFFIR_DECODE_CONCURRENCY` | `4` | decode worker processes for large uploads (plus 2 for small ones), on demand |
| `DIFFIR_DECODE_TIMEOUT_S` | `10` | a decode worker still busy after this is killed: 422 `decode_too_slow` |
| `DIFFIR_DECODE_MEMORY_MB` | `1536` | address-space limit of each decode worker; beyond it 413 `decode_too_large` |
| `DIFFIR_SMALL_DECODE_PIXELS` | `262144` | uploads of at most this many pixels (header) use the small decode lane |
| `DIFFIR_MAX_JPEG_SCANS` | `64` | JPEGs with more scans are refused before decoding: 422 `decode_too_slow` |
| `DIFFIR_MAX_BATCH_PIXELS` | `16777216` | most padded area × scale² in one model call (also capped by count) |
| `DIFFIR_MAX_UPLOAD_BYTES_IN_FLIGHT` | `268435456` | body bytes held by uploads being read/decoded; 503 `busy` beyond |
| `DIFFIR_HEADER_TIMEOUT_S` | `10` | request headers not complete this long after the connection opened: closed |
| `DIFFIR_MAX_HEADER_BYTES` | `32768` | request line and headers larger than this: 431 `headers_too_large`, closed |
| `DIFFIR_MAX_HEADER_COUNT` | `100` | more request header fields than this: 431 `headers_too_large`, closed |
| `DIFFIR_MAX_CONNECTIONS` | `1000` | more open connections than this: 503 `too_many_connections` at once, closed |
| `DIFFIR_BODY_TIMEOUT_S` | `60` | a request body not complete within this many seconds: 408 `request_timeout` |
| `DIFFIR_BODY_IDLE_TIMEOUT_S` | `10` | a request body that sends nothing for this many seconds: 408 `request_timeout` |
| `DIFFIR_KEEP_ALIVE_S` | `5` | idle keep-alive connections are closed after this many seconds |
| `DIFFIR_LARGE_QUEUE_SIZE` | `4` | queued tiled (large) inputs per task; they run one at a time, tile by tile |
| `DIFFIR_DEADLINE_S` | `60` | one deadline over decode, queue, inference and encode: 504 `deadline_exceeded` |
| `DIFFIR_TILED_DEADLINE_S` | `900` | the deadline for inputs large enough to be tiled (minutes on a CPU at 4096²) |
| `DIFFIR_RETRY_AFTER_S` | `1` | value of `Retry-After` on 503 responses |
| `DIFFIR_MAX_BODY_BYTES` | `33554432` | request body cap in bytes (32 MiB); 413 `body_too_large` |
| `DIFFIR_MAX_INPUT_PIXELS` | `16777216` | input pixel cap (4096²), checked from the header; 413 `too_many_pixels` |
| `DIFFIR_MAX_OUTPUT_PIXELS` | `16777216` | output pixel cap (e.g. 1024² × 4 for `sr-x4`); 413 `output_too_large` |
| `DIFFIR_TILE_SIZE` | `384` | tile edge (input pixels) for large images (`bench/results/tile_size-*.md`) |
| `DIFFIR_TILE_OVERLAP` | `32` | overlap between neighbouring tiles (input pixels), blended with a linear feather |
| `DIFFIR_TILE_THRESHOLD_PIXELS` | `1048576` | padded area × scale² above this: restored in tiles (one IPR) |
| `DIFFIR_PRIOR_MAX_PIXELS` | `4194304` | a bare `artifact` (no checkpoint): larger tiled inputs get a downscaled IPR |
| `DIFFIR_BUCKET_MULTIPLE` | `0` | pad sizes up to a multiple of this to batch more (0: the model's multiple) |
| `DIFFIR_MASK_THRESHOLD` | `0.5` | a mask pixel is a hole when its luminance (× alpha) is at least this (0–1) |
| `DIFFIR_PNG_COMPRESS_LEVEL` | `3` | zlib level of PNG responses (0–9) |
| `DIFFIR_WARMUP_SIZE` | `64` | edge of the square warm-up input run at batch 1 and at the max batch before ready |
| `DIFFIR_TASKS` | unset | JSON: task -> `{"checkpoint"\|"artifact": path, "variant", "backend"}` (unset: defaults) |
| `DIFFIR_DRAIN_SECONDS` | `30` | on SIGTERM: stop accepting, finish what was accepted, exit within this many seconds |
| `DIFFIR_METRICS_PORT` | unset | serve `/metrics` on this separate port (same host) instead of the main one |
| `DIFFIR_CORS_ORIGINS` | unset | comma-separated origins (`https://app.example`) whose pages may call the API |
| `DIFFIR_LOG_LEVEL` | `info` | `debug`, `info`, `warning`, `error` |
| `DIFFIR_LOG_JSON` | `true` | structured JSON log lines (request id, task, status, timings; never image data) |

`DIFFIR_TASKS` entries: exactly one of `checkpoint` (a `.safetensors` with sidecar, or an official
`.pth`/`.ckpt`; any backend: `onnxruntime`/`torchscript` export it on first use into the cache
folder) or `artifact` (an exported `<name>.<graph>.onnx` / `.ts`; the backend
follows the suffix, and the sibling `prior`/`restorer` graphs enable tiling when present). `variant`
names a preset (needed for official checkpoints whose architecture is ambiguous). A task named like
one of `models.tasks.TASKS` may omit the path to use its shipped default checkpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BackendName = Literal["auto", "torch", "torchscript", "onnxruntime"]
TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
ARTIFACT_SUFFIXES: dict[str, BackendName] = {".onnx": "onnxruntime", ".ts": "torchscript", ".pt": "torchscript"}


class TaskSettings(BaseModel):
    """Where one task's model comes from and how it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: Path | None = None
    artifact: Path | None = None
    variant: str | None = None
    backend: BackendName | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TaskSettings:
        if self.checkpoint is not None and self.artifact is not None:
            raise ValueError("give either `checkpoint` or `artifact`, not both")
        if self.artifact is not None:
            expected = ARTIFACT_SUFFIXES.get(self.artifact.suffix)
            if expected is None:
                raise ValueError(f"artifact {self.artifact} must end in {', '.join(ARTIFACT_SUFFIXES)}")
            if self.backend not in (None, expected):
                raise ValueError(f"artifact {self.artifact.name} runs on {expected}, not {self.backend}")
        return self


class Settings(BaseSettings):
    """All service settings (see the module docstring for the table)."""

    model_config = SettingsConfigDict(env_prefix="DIFFIR_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    device: str = "auto"
    backend: BackendName = "auto"
    precision: Literal["fp32", "fp16", "bf16"] | None = None
    cache_dir: Path | None = None
    prepared_dir: Path | None = None
    autotune_size: int = Field(256, ge=8, le=4096)
    torch_threads: int | None = Field(None, ge=1, le=256)
    max_batch_size: int | None = Field(None, ge=1, le=256)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)
    queue_size: int = Field(32, ge=1, le=100_000)
    max_queued_pixels: int = Field(64 * 1024 * 1024, ge=1)
    large_queue_size: int = Field(4, ge=1, le=10_000)
    decode_concurrency: int = Field(4, ge=1, le=256)
    decode_timeout_s: float = Field(10.0, gt=0, le=3600)
    decode_memory_mb: int | None = Field(1536, ge=256)
    small_decode_pixels: int = Field(512 * 512, ge=0)
    max_jpeg_scans: int = Field(64, ge=1, le=1_000_000)
    max_batch_pixels: int = Field(4096 * 4096, ge=1)
    max_upload_bytes_in_flight: int = Field(256 * 1024 * 1024, ge=1024)
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_header_count: int = Field(100, ge=8, le=10_000)
    max_connections: int = Field(1000, ge=1, le=1_000_000)
    body_timeout_s: float = Field(60.0, gt=0, le=3600)
    body_idle_timeout_s: float = Field(10.0, gt=0, le=3600)
    keep_alive_s: int = Field(5, ge=1, le=3600)
    deadline_s: float = Field(60.0, gt=0, le=3600)
    tiled_deadline_s: float = Field(900.0, gt=0, le=24 * 3600)
    retry_after_s: int = Field(1, ge=1, le=3600)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_input_pixels: int = Field(4096 * 4096, ge=1)
    max_output_pixels: int = Field(4096 * 4096, ge=1)
    tile_size: int = Field(384, ge=32, le=8192)
    tile_overlap: int = Field(32, ge=0, le=1024)
    tile_threshold_pixels: int = Field(1024 * 1024, ge=1)
    prior_max_pixels: int = Field(2048 * 2048, ge=64 * 64)
    bucket_multiple: int = Field(0, ge=0, le=4096)
    mask_threshold: float = Field(0.5, gt=0, le=1)
    png_compress_level: int = Field(3, ge=0, le=9)
    warmup_size: int = Field(64, ge=0, le=4096)
    tasks: Annotated[dict[str, TaskSettings], NoDecode] = Field(default_factory=dict)
    drain_seconds: float = Field(30.0, ge=0, le=3600)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = True

    @field_validator("api_key", mode="before")
    @classmethod
    def _api_key(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value  # empty means no key

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _cors_origins(cls, value: object) -> object:
        if isinstance(value, str):  # the environment gives "https://a.example, https://b.example"
            value = [part.strip() for part in value.split(",") if part.strip()]
        for origin in value if isinstance(value, list | tuple) else ():
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", str(origin)):
                raise ValueError(f"CORS origin {origin!r} must be scheme://host[:port] (no path) or *")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {value!r}")
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, value: Any) -> Any:
        if isinstance(value, str):  # parsed here, not by pydantic-settings, so that an error names the variable
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
        if isinstance(value, dict):
            for name in value:
                if not TASK_NAME.match(str(name)):
                    raise ValueError(f"task name {name!r} must match {TASK_NAME.pattern}")
        return value

    @model_validator(mode="after")
    def _tiles(self) -> Settings:
        if self.tile_overlap * 2 >= self.tile_size:
            raise ValueError(f"tile_overlap ({self.tile_overlap}) must be under half of tile_size ({self.tile_size})")
        return self


def unknown_variables(environ: dict[str, str]) -> list[str]:
    """`DIFFIR_*` variables that are no setting, each with a suggestion when one is close (typos)."""
    import difflib

    known = [f"DIFFIR_{name.upper()}" for name in Settings.model_fields]
    notes = []
    for variable in sorted(v for v in environ if v.upper().startswith("DIFFIR_") and v.upper() not in known):
        close = difflib.get_close_matches(variable.upper(), known, n=1, cutoff=0.8)
        notes.append(f"{variable} (did you mean {close[0]}?)" if close else variable)
    return notes


SERVER_ONLY = (
    "host",
    "port",
    "metrics_port",
    "api_key",
    "cors_origins",
    "header_timeout_s",
    "keep_alive_s",
    "body_timeout_s",
    "body_idle_timeout_s",
    "drain_seconds",
)
"""Settings of the HTTP server alone: a local `diffir-restore` run opens no port and reads no
request, so it ignores these variables (a stale `DIFFIR_PORT` must not stop it)."""


def describe_validation_error(exc: Exception, flags: Mapping[str, str] | None = None) -> str:
    """One line naming the bad setting(s), for start-up failures (no traceback wall). `flags` maps
    a setting to the command-line flag that gave it, so an error blames the flag, not the variable."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    parts = []
    for err in errors():
        loc = [str(p) for p in err.get("loc", ())]
        name = ((flags or {}).get(loc[0]) or "DIFFIR_" + loc[0].upper()) if loc else "settings"
        where = name + ("[" + ".".join(loc[1:]) + "]" if len(loc) > 1 else "")
        parts.append(f"{where}: {err.get('msg')}")
    return "invalid settings: " + "; ".join(parts)


def load_settings(
    overrides: dict[str, Any], *, flags: Mapping[str, str] | None = None, ignore: tuple[str, ...] = ()
) -> Any:
    """Settings from the environment plus CLI overrides (None: not given), or `StartupError` with one
    line. `flags`: the flag behind each override, for that line; `ignore`: settings whose variables
    are not read (their defaults apply)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from service.errors import StartupError

    values = {name: Settings.model_fields[name].get_default(call_default_factory=True) for name in ignore}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except (ValidationError, SettingsError, ValueError) as exc:
        raise StartupError(describe_validation_error(exc, flags)) from None
