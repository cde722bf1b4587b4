"""`python -m service [--host H] [--port P]` serves; `python -m service restore ...` restores files locally.

Start-up faults (invalid settings, missing/truncated/mismatched model files) end the process
with exit status 2 (settings) or 1 (models) and a single line on stderr naming the problem.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "restore":
        from service.cli import main as restore_main

        return restore_main(args[1:])
    from service.server import main as serve_main

    return serve_main(args)


if __name__ == "__main__":
    sys.exit(main())
