"""The data sets as `sources.json` lists them: per file its upstream URL, size and checksum."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SOURCES = Path(__file__).resolve().parent / "sources.json"


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the data root (and to a mirror)
    url: str  # upstream, pinned to a commit
    bytes: int
    sha256: str  # of the file as stored in the data root
    convert: str = ""  # "" | "png" (BMP/TIFF re-encoded) | "resize-256" (LANCZOS): applied after an upstream download
    pixels_sha256: str = ""  # what a converted file must decode to (the PNG encoder's bytes may differ)


@dataclass(frozen=True)
class DataSet:
    name: str
    folder: str
    source: str
    licence: str
    files: tuple[DataFile, ...]

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)


def load_sets(path: Path = SOURCES) -> list[DataSet]:
    doc = json.loads(Path(path).read_text())
    return [
        DataSet(s["name"], s["folder"], s["source"], s["licence"], tuple(DataFile(**f) for f in s["files"]))
        for s in doc["sets"]
    ]


def select(sets: list[DataSet], names: list[str]) -> list[DataSet]:
    """The named sets (all when none is named); an unknown name is an error that lists the known ones."""
    if not names:
        return sets
    known = {s.name: s for s in sets}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown data set(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]
