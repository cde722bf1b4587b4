"""`python -m training.data fetch`: verified, resumable downloads from a mirror or an upstream URL.

Every test builds its own tiny corpus and mirror (no network): a local folder, a file:// URL and a
local HTTP server that honours `Range` and can cut a response off halfway.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from training.data import REPO_ROOT
from training.data import __main__ as data_cli
from training.data.fetch import ChecksumError, FetchError, fetch, pixel_digest, verify
from training.data.manifest import DataFile, DataSet, load_sets


def _png(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _entry(path: str, data: bytes, url: str = "https://example.invalid/x") -> DataFile:
    return DataFile(path=path, url=url, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[list[DataSet], Path]:
    """Two sets, three files, laid out in a mirror folder as in a data root."""
    files = {"val/A/a1.png": _png(1), "val/A/a2.png": _png(2, 200), "tasks/b/b1.png": _png(3)}
    mirror = tmp_path / "mirror"
    for rel, data in files.items():
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        (mirror / rel).write_bytes(data)
    entries = {rel: _entry(rel, data) for rel, data in files.items()}
    sets = [
        DataSet("A", "val/A", "made here", "test licence A", (entries["val/A/a1.png"], entries["val/A/a2.png"])),
        DataSet("b", "tasks/b", "made here", "test licence b", (entries["tasks/b/b1.png"],)),
    ]
    return sets, mirror


@pytest.mark.parametrize("as_url", [False, True], ids=["folder", "file-url"])
def test_fetch_from_a_mirror_verifies_and_skips_what_is_there(corpus, tmp_path, as_url):
    sets, mirror = corpus
    root = tmp_path / "data"
    source = mirror.as_uri() if as_url else str(mirror)
    first = fetch(sets, root, source, show_progress=False)
    assert [(r.fetched, r.present) for r in first] == [(2, 0), (1, 0)]
    for s in sets:
        for f in s.files:
            assert (root / f.path).read_bytes() == (mirror / f.path).read_bytes()
    assert verify(sets, root) == []
    again = fetch(sets, root, source, show_progress=False)
    assert [(r.fetched, r.present, r.bytes_read) for r in again] == [(0, 2, 0), (0, 1, 0)]


def test_an_interrupted_download_resumes_where_it_stopped(corpus, tmp_path):
    """A `.part` left by an earlier run: only the missing bytes are read, and the result is whole."""
    sets, mirror = corpus
    root = tmp_path / "data"
    f = sets[0].files[1]
    whole = (mirror / f.path).read_bytes()
    part = root / (f.path + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(whole[:1000])
    (rep,) = fetch([DataSet("A", "val/A", "", "", (f,))], root, str(mirror), show_progress=False)
    assert rep.fetched == 1 and rep.bytes_read == len(whole) - 1000
    assert (root / f.path).read_bytes() == whole and not part.exists()


def test_a_checksum_mismatch_is_refused_and_nothing_is_written(corpus, tmp_path, capsys):
    sets, mirror = corpus
    f = sets[1].files[0]
    tampered = bytearray((mirror / f.path).read_bytes())
    tampered[-20] ^= 0xFF
    (mirror / f.path).write_bytes(bytes(tampered))
    root = tmp_path / "data"
    with pytest.raises(ChecksumError, match=re.escape(f.path) + ".*expected " + f.sha256):
        fetch(sets[1:], root, str(mirror), show_progress=False)
    assert not (root / f.path).exists() and not (root / (f.path + ".part")).exists()
    # a file already in the root with other bytes is replaced only by the listed one
    (root / f.path).write_bytes(b"old")
    with pytest.raises(ChecksumError):
        fetch(sets[1:], root, str(mirror), show_progress=False)
    assert (root / f.path).read_bytes() == b"old" and verify(sets[1:], root) == [f.path]


class _RangeServer(BaseHTTPRequestHandler):
    """Serves `files`; honours `Range: bytes=N-`; the first full GET of a path in `cut` stops halfway."""

    files: ClassVar[dict[str, bytes]] = {}
    cut: ClassVar[set[str]] = set()
    requests: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self):
        data = self.files.get(self.path)
        self.requests.append((self.path, self.headers.get("Range")))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"]).group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.path in self.cut and not start:
            self.cut.discard(self.path)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(corpus):
    sets, mirror = corpus
    handler = type("Handler", (_RangeServer,), {"files": {}, "cut": set(), "requests": []})
    for s in sets:
        for f in s.files:
            handler.files["/" + f.path] = (mirror / f.path).read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sets, f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_a_download_cut_off_midway_resumes_with_an_http_range_request(http_mirror, tmp_path):
    sets, url, handler = http_mirror
    f = sets[0].files[1]
    handler.cut.add("/" + f.path)
    (rep, _) = fetch(sets, tmp_path / "data", url, show_progress=False)
    size = len(handler.files["/" + f.path])
    assert [r for r in handler.requests if r[0] == "/" + f.path] == [
        ("/" + f.path, None),
        ("/" + f.path, f"bytes={size // 2}-"),
    ]
    assert rep.fetched == 2 and verify(sets, tmp_path / "data") == []


def test_an_http_source_that_keeps_failing_is_an_error_naming_the_url(http_mirror, tmp_path):
    sets, url, handler = http_mirror
    handler.files.pop("/" + sets[1].files[0].path)
    with pytest.raises(FetchError, match=r"tasks/b/b1\.png: HTTP 404"):
        fetch(sets[1:], tmp_path / "data", url, show_progress=False)


def test_upstream_originals_are_converted_and_checked_by_their_pixels(tmp_path):
    """Without a mirror a file comes from its upstream URL; a BMP original becomes the stored PNG."""
    png = _png(5)
    bmp = io.BytesIO()
    Image.open(io.BytesIO(png)).save(bmp, format="BMP")
    (tmp_path / "up.bmp").write_bytes(bmp.getvalue())
    entry = DataFile("train/t1.png", (tmp_path / "up.bmp").as_uri(), len(png), hashlib.sha256(png).hexdigest(),
                     convert="png", pixels_sha256=pixel_digest(png))  # fmt: skip
    fetch([DataSet("train", "train", "", "", (entry,))], tmp_path / "data", None, show_progress=False)
    assert pixel_digest((tmp_path / "data" / "train" / "t1.png").read_bytes()) == pixel_digest(png)
    wrong = DataFile(**{**entry.__dict__, "path": "train/t2.png", "pixels_sha256": "0" * 64})
    with pytest.raises(ChecksumError, match="converted pixels"):
        fetch([DataSet("train", "train", "", "", (wrong,))], tmp_path / "data", None, show_progress=False)
    assert not (tmp_path / "data" / "train" / "t2.png").exists()


def test_the_command_fetches_names_licences_and_fails_in_one_line(corpus, tmp_path, monkeypatch, capsys):
    sets, mirror = corpus
    monkeypatch.setattr(data_cli, "load_sets", lambda: sets)
    assert data_cli.main(["fetch", "--root", str(tmp_path / "d"), "--mirror", str(mirror), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "A            fetched 2, already there 0  licence: test licence A" in out
    assert data_cli.main(["verify", "b", "--root", str(tmp_path / "d")]) == 0
    assert data_cli.main(["fetch", "nope", "--root", str(tmp_path / "d")]) == 2
    assert "unknown data set(s) nope; known: A, b" in capsys.readouterr().err
    (mirror / sets[1].files[0].path).write_bytes(b"not it")
    (tmp_path / "d" / sets[1].files[0].path).unlink()
    assert data_cli.main(["fetch", "b", "--root", str(tmp_path / "d"), "--mirror", str(mirror), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fetch failed: tasks/b/b1.png: sha256 ")


def test_the_shipped_source_list_is_complete_and_pinned():
    sets = load_sets()
    names = {s.name for s in sets}
    assert {"train", "Set5", "Set14", "BSD100", "Urban100", "Kodak24", "gopro", "places2", "masks"} <= names
    assert {"celebahq256", "ffhq256"} <= names
    paths = [f.path for s in sets for f in s.files]
    assert len(paths) == len(set(paths)) == 414
    for s in sets:
        assert s.licence and s.source
        for f in s.files:
            assert f.path.startswith(s.folder + "/") and re.fullmatch(r"[0-9a-f]{64}", f.sha256)
            assert re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/[0-9a-f]{40}/.+", f.url), f.url
            assert (f.convert == "") == (f.pixels_sha256 == ""), f.path
    assert sum(f.bytes for s in sets for f in s.files) == 115_572_786  # T91 + BSD200 train, the val and task sets
    assert json.loads((REPO_ROOT / "training" / "data" / "sources.json").read_text())["sets"][0]["name"] == "Set5"


LOCAL_MIRROR = REPO_ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not LOCAL_MIRROR.is_dir(), reason=f"no local mirror of the data sets at {LOCAL_MIRROR}")
def test_the_listed_checksums_match_a_real_mirror(tmp_path):
    """Where a copy of the corpus sits beside the checkout, the listed files fetch from it and verify."""
    sets = [s for s in load_sets() if s.name in ("Set5", "masks")]
    reports = fetch(sets, tmp_path / "data", str(LOCAL_MIRROR), show_progress=False)
    assert [r.fetched for r in reports] == [len(s.files) for s in sets]


def test_the_data_root_is_data_in_the_checkout_unless_DIFFIR_DATA_says_otherwise(tmp_path):
    code = "from training.data import DATA_ROOT; print(DATA_ROOT)"
    env = {k: v for k, v in os.environ.items() if k != "DIFFIR_DATA"}
    default = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO_ROOT)},
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert Path(default.stdout.strip()) == REPO_ROOT / "data"
    moved = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                           env={**env, "PYTHONPATH": str(REPO_ROOT), "DIFFIR_DATA": str(tmp_path / "d")})  # fmt: skip
    assert Path(moved.stdout.strip()) == tmp_path / "d"
