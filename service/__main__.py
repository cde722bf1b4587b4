"""`python -m service` / `diffir-serve` serves; `python -m service restore ...` restores files (= `diffir-restore`).

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
    from importlib.util import find_spec

    missing = [m for m in ("fastapi", "uvicorn", "torch") if find_spec(m) is None]
    if missing:  # a client-only install (`pip install diffir-serve`) has the HTTP client and diffir-restore only
        print(f"diffir-serve: serving needs {', '.join(missing)}: pip install 'diffir-serve[serve]'", file=sys.stderr)
        return 1
    from service.server import main as serve_main

    return serve_main(args)


if __name__ == "__main__":
    sys.exit(main())
