"""`python -m training stage1|stage2|evaluate|probe|export|data ...` (see `--help` of each).

`data` (fetching the image sets) needs only the base install; the other commands need the `train` extra,
and without it say so in one line instead of failing on an import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _train(stage: int, argv: Sequence[str]) -> int:
    from training.config import add_arguments, config_from_args
    from training.run import run_stage

    parser = argparse.ArgumentParser(
        prog=f"python -m training stage{stage}",
        description=f"Train DiffIR stage {stage}. `--task sr-x4 --data DIR` is enough; every TrainConfig key "
        "is a flag (underscores as dashes) and may also come from --config FILE.",
    )
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv), stage)
    run_stage(cfg)
    return 0


TRAIN_EXTRA_MODULES = ("torch", "numpy", "PIL", "scipy", "cv2", "skimage")


def _missing_train_extra() -> list[str]:
    from importlib.util import find_spec

    return [m for m in TRAIN_EXTRA_MODULES if find_spec(m) is None]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("stage1", "stage2", "evaluate", "probe", "export", "data")
    usage = f"usage: python -m training {{{'|'.join(commands)}}} [options]   (each takes --help)"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if not argv or argv[0] not in commands:
        print(usage, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "data":
        from training.data.__main__ import main as data_main

        return data_main(rest)
    missing = _missing_train_extra()
    if missing:
        print(
            f"diffir-train {cmd} needs the training extra (missing {', '.join(missing)}): "
            "pip install 'diffir-serve[train]' (torch first, see the README)",
            file=sys.stderr,
        )
        return 1
    if cmd in ("stage1", "stage2"):
        return _train(int(cmd[-1]), rest)
    if cmd == "evaluate":
        from training.evaluate import main as evaluate_main

        return evaluate_main(rest)
    if cmd == "probe":
        from training.probe import main as probe_main

        return probe_main(rest)
    from training.export import main as export_main  # written by the lead (training/export.py)

    return int(export_main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
