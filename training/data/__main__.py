"""`python -m training.data {fetch|list|verify}`: get the training and evaluation images.

    python -m training.data list
    python -m training.data fetch [SET ...] [--root DIR] [--mirror DIR_OR_URL]
    python -m training.data verify [SET ...] [--root DIR]

`fetch` downloads every listed file the root lacks from its upstream URL (or from `--mirror`, a folder
or URL laid out like the data root), resuming interrupted downloads, and keeps a file only when its
SHA-256 is the listed one. Each set's licence is printed: most are for non-commercial research use.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from training.data import DATA_ENV, DATA_ROOT
from training.data.fetch import FetchError, fetch, verify
from training.data.manifest import load_sets, select


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the sets: files, size, licence, source")
    for name, text in (("fetch", "download the sets into the data root"), ("verify", "check the data root")):
        p = sub.add_parser(name, help=text)
        p.add_argument("sets", nargs="*", metavar="SET", help="set names (default: all; see `list`)")
        p.add_argument("--root", type=Path, default=DATA_ROOT, help=f"the data root (default {DATA_ROOT}, ${DATA_ENV})")
        if name == "fetch":
            p.add_argument("--mirror", help="a folder, file:// or http(s):// URL laid out like the data root")
            p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sets = load_sets()
    if args.command == "list":
        for s in sets:
            print(f"{s.name:<12} {len(s.files):>4} files {s.bytes / 1e6:>7.2f} MB  {s.folder}/")
            print(f"{'':<12} licence: {s.licence}")
            print(f"{'':<12} source: {s.source}")
        return 0
    try:
        chosen = select(sets, args.sets)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "verify":
        bad = verify(chosen, args.root)
        for path in bad:
            print(f"missing or different: {path}")
        print(f"{sum(len(s.files) for s in chosen) - len(bad)} files verified in {args.root}, {len(bad)} not")
        return 1 if bad else 0
    try:
        reports = fetch(chosen, args.root, args.mirror, show_progress=not args.quiet)
    except FetchError as exc:
        print(f"fetch failed: {exc}", file=sys.stderr)
        return 1
    for s, rep in zip(chosen, reports):
        print(f"{s.name:<12} fetched {rep.fetched}, already there {rep.present}  licence: {s.licence}")
    print(f"data root: {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
