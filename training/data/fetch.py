"""Download data files resumably and keep only what matches its checksum.

Each file is fetched into `<name>.part` beside its destination. An interrupted download leaves the
`.part` behind; the next attempt (a retry, or the next run) asks only for the missing bytes: an HTTP
`Range` request, or a seek for a local mirror. A complete file replaces the destination only when
its SHA-256 is the one listed, so a corrupt or tampered file is refused and never lands in the data
root. Upstream files that the corpus re-encoded (`convert`) are converted after download and checked
by what they decode to, since another PNG encoder writes other bytes for the same pixels.

A mirror (a local folder, a `file://` URL or an `http(s)://` URL) holds the data root's own layout;
without one every file comes from its upstream URL.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from training.data.manifest import DataFile, DataSet

log = logging.getLogger(__name__)
CHUNK = 1 << 16
ATTEMPTS = 3


class FetchError(RuntimeError):
    """A file could not be fetched (after retries); the message names the file and the source."""


class ChecksumError(FetchError):
    """A fetched file is not the listed one; it was deleted, nothing was written."""


@dataclass
class SetReport:
    name: str
    fetched: int = 0
    present: int = 0
    bytes_read: int = 0
    files: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def pixel_digest(data: bytes) -> str:
    """SHA-256 of what an image decodes to (mode, size, pixels), independent of its encoding."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return hashlib.sha256(f"{im.mode}|{im.width}x{im.height}|".encode() + im.tobytes()).hexdigest()


def convert(data: bytes, how: str) -> bytes:
    """Re-encode an upstream file as the corpus stores it."""
    try:
        from PIL import Image
    except ImportError as exc:  # the base (client) install has no Pillow
        raise FetchError("converting upstream images needs Pillow: pip install 'diffir-serve[train]'") from exc

    with Image.open(io.BytesIO(data)) as im:
        if how == "resize-256":
            im = im.convert("RGB").resize((256, 256), Image.Resampling.LANCZOS)
        elif how != "png":
            raise ValueError(f"unknown conversion {how!r}")
        out = io.BytesIO()
        im.save(out, format="PNG")
        return out.getvalue()


def source_url(f: DataFile, mirror: str | None) -> str:
    if not mirror:
        return f.url
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + urllib.parse.quote(f.path)
    return (Path(mirror).resolve() / f.path).as_uri()


def _local_path(url: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))


def download(url: str, part: Path, progress: Callable[[int], None], client=None) -> int:
    """Append the bytes of `url` that `part` lacks; returns how many were read. Restarts from zero when
    the source cannot resume (an HTTP server that ignores `Range`)."""
    have = part.stat().st_size if part.exists() else 0
    read = 0
    if url.startswith("file:"):
        src = _local_path(url)
        if not src.is_file():
            raise FetchError(f"{url}: no such file")
        if src.stat().st_size < have:  # the .part is from another file: start again
            part.unlink()
            have = 0
        with src.open("rb") as fin, part.open("ab") as fout:
            fin.seek(have)
            for block in iter(lambda: fin.read(CHUNK), b""):
                fout.write(block)
                read += len(block)
                progress(len(block))
        return read
    import httpx

    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", url, headers=headers) as r:
        if r.status_code == 416:  # the .part is already as long as the file, or longer: start again
            part.unlink()
            raise FetchError(f"{url}: the partial download did not fit the file; starting again")
        if r.status_code == 200 and have:
            log.info("%s ignores Range: downloading from the start", url)
            part.unlink()
            have = 0
        elif r.status_code not in (200, 206):
            raise FetchError(f"{url}: HTTP {r.status_code}")
        try:
            with part.open("ab") as fout:
                for block in r.iter_bytes():  # as it arrives: what came before a cut is kept
                    fout.write(block)
                    read += len(block)
                    progress(len(block))
        except httpx.HTTPError as exc:
            raise FetchError(f"{url}: interrupted after {have + read} bytes ({exc})") from exc
    return read


def fetch_file(f: DataFile, root: Path, mirror: str | None, progress: Callable[[int], None], client=None) -> bool:
    """Make `root/f.path` the listed file. Returns False when it already was (nothing read)."""
    dest = root / f.path
    if dest.is_file() and sha256_file(dest) == f.sha256:
        return False
    url = source_url(f, mirror)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            download(url, part, progress, client)
            break
        except FetchError as exc:
            if attempt == ATTEMPTS or not part.parent.is_dir():
                raise
            log.warning("%s (attempt %d of %d); resuming", exc, attempt, ATTEMPTS)
    if f.convert and not mirror:  # an upstream original: convert, then check the pixels
        data = convert(part.read_bytes(), f.convert)
        got, want = pixel_digest(data), f.pixels_sha256
        part.unlink()
        if got != want:
            raise ChecksumError(f"{f.path}: converted pixels sha256 {got}, expected {want} (from {url}); refused")
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return True
    got = sha256_file(part)
    if got != f.sha256:
        part.unlink()
        raise ChecksumError(f"{f.path}: sha256 {got}, expected {f.sha256} (from {url}); refused, nothing written")
    os.replace(part, dest)
    return True


def fetch(sets: list[DataSet], root: Path, mirror: str | None = None, show_progress: bool = True) -> list[SetReport]:
    """Fetch every file of `sets` that `root` lacks (or holds with another checksum), with a progress bar."""
    from tqdm import tqdm

    total = sum(s.bytes for s in sets)
    client = None
    if not mirror or mirror.startswith(("http://", "https://")):
        import httpx

        client = httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0))
    reports = []
    try:
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not show_progress) as bar:
            for s in sets:
                rep = SetReport(s.name)
                bar.set_description(s.name)

                def step(n: int, rep: SetReport = rep) -> None:
                    rep.bytes_read += n
                    bar.update(n)

                for f in s.files:
                    if fetch_file(f, root, mirror, step, client):
                        rep.fetched += 1
                        rep.files.append(f.path)
                    else:
                        rep.present += 1
                        bar.update(f.bytes)
                reports.append(rep)
    finally:
        if client is not None:
            client.close()
    return reports


def verify(sets: list[DataSet], root: Path) -> list[str]:
    """Paths (relative to the root) that are missing or differ from their listed checksum."""
    files = (f for s in sets for f in s.files)
    return [f.path for f in files if not (root / f.path).is_file() or sha256_file(root / f.path) != f.sha256]
