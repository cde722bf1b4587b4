"""`python -m service` / `diffir-serve` serves; `python -m service restore ...` restores files (= `diffir-restore`);
`python -m service prepare --out DIR` builds the exported graphs ahead of time (an image build step).

Start-up faults (invalid settings, missing/truncated/mismatched model files) end the process
with exit status 2 (settings) or 1 (models) and a single line on stderr naming the problem.
"""

from __future__ import annotations

import sys

from service.extras import SERVE_INSTALL, needs_serve_extra

CLIENT_ONLY_HELP = f"""usage: diffir-serve [options]                 serve the HTTP API (needs the serve extra)
       diffir-serve restore TASK INPUT... -o DIR --server URL   restore through a running server (= diffir-restore)
       diffir-serve prepare --out DIR           build the exported graphs ahead of time (needs the serve extra)

This is the client install: serving, `prepare` and restoring without --server need {SERVE_INSTALL}."""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "restore":
        from service.cli import main as restore_main

        return restore_main(args[1:])
    problem = needs_serve_extra("diffir-serve prepare" if args[:1] == ["prepare"] else "diffir-serve")
    if problem:  # the client install (`pip install .`): the HTTP client and diffir-restore --server only
        if args[:1] in (["-h"], ["--help"]):
            print(CLIENT_ONLY_HELP)
            return 0
        print(problem, file=sys.stderr)
        return 1
    if args and args[0] == "prepare":  # an image build step: the exports a start would build
        from service.prepare import main as prepare_main

        return prepare_main(args[1:])
    from service.http.server import main as serve_main

    return serve_main(args)


if __name__ == "__main__":
    sys.exit(main())
