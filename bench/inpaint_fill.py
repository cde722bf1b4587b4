"""How the inpainting pre-fill's biharmonic step count moves quality, in and out of the training domain.

`python -m bench.inpaint_fill [--out bench/results] [--steps 100 300 600 1500] [--network-at N ...]
[--checkpoint PATH] [--threads 0]`.

The `smooth` pre-fill ends with a fixed number of conjugate-gradient steps towards the biharmonic
interpolant (`ModelConfig.fill_biharmonic_iterations`). On the evaluation set of face and Places2 holes
a longer solve looks better, so this measures every step count on two sets side by side:

* `eval`: the task's evaluation protocol (`python -m training evaluate --task inpaint`: 256² faces with
  the shipped hole masks, and Places2 photos with their own masks);
* `in-domain`: the Kodak24 photos with holes drawn by the training degradation (seeded, like
  `python -m training evaluate --task inpaint --folder <Kodak24>`), the kind of mask the model is trained on.

For each set and step count: the pre-fill alone, and the network (the shipped model, or `--checkpoint`)
run on that fill (its weights learned a correction of one fill, the one its sidecar names, and by
default the network runs on that one only; `--network-at` names others), with scikit-image's
converged biharmonic inpainting as the reference on the evaluation set. Mean PSNR (RGB, whole
composited image). Results: `<out>/inpaint_fill.json` and `.md`.
About 10 minutes on 2 threads of the 2-core VM; each extra `--network-at` step count adds about 5 (the
network on 24 whole Kodak photos); `--limit N` takes the first N images of each set.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from models import load_model
from models.diffir import DiffIRS2
from models.inpainting import composite, smooth_fill
from models.tasks import get_task
from training.data import DATA_ROOT
from training.evaluate import Case, biharmonic, folder_cases, inpaint_cases, restore
from training.metrics import all_metrics

log = logging.getLogger("bench.inpaint_fill")


def _psnr(out: torch.Tensor, case: Case) -> float:
    return all_metrics(composite(case.gt, case.mask, out.clamp(0, 1)), case.gt)["psnr"]


def _with_fill(net: DiffIRS2, steps: int) -> DiffIRS2:
    """The same weights behind a pre-fill of `steps` biharmonic iterations."""
    other = DiffIRS2(replace(net.config, fill_biharmonic_iterations=steps))
    other.load_state_dict(net.state_dict())
    return other.eval()


def measure(cases: list[Case], net: DiffIRS2, steps: list[int], network_at: list[int], reference: bool) -> dict:
    rows = {"biharmonic (scikit-image)": [_psnr(biharmonic(c.lq, c.mask), c) for c in cases]} if reference else {}
    for n in steps:
        rows[f"pre-fill {n}"] = [_psnr(smooth_fill(c.lq[None], c.mask[None], n)[0], c) for c in cases]
        if n in network_at:
            variant = _with_fill(net, n)
            rows[f"network on pre-fill {n}"] = [_psnr(restore(variant, c, 0), c) for c in cases]
    return {"n": len(cases), "mean_psnr": {k: statistics.fmean(v) for k, v in rows.items()}, "per_image": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inpaint_fill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 300, 600, 1500])
    parser.add_argument(
        "--network-at", type=int, nargs="+", help="step counts to run the network at (default: the fill it learned)"
    )
    parser.add_argument("--checkpoint", default="", help="inpainting checkpoint (default: the shipped one)")
    parser.add_argument("--data-root", default=str(DATA_ROOT))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="first N images of each set (0: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data_root)
    spec = get_task("inpaint")
    net = load_model(args.checkpoint or spec.default_checkpoint_path())
    network_at = args.network_at or [net.config.fill_biharmonic_iterations]
    sets = {
        "eval": list(inpaint_cases(root)),
        "in-domain": list(folder_cases(root / "val" / "Kodak24", "inpaint", seed=0)),
    }
    if args.limit:
        sets = {name: cases[: args.limit] for name, cases in sets.items()}
    started = time.perf_counter()
    shown = sys.argv[1:] if argv is None else argv
    result = {
        "command": " ".join(["python -m bench.inpaint_fill", *shown]),
        "steps": args.steps,
        "network_fill": net.config.fill_biharmonic_iterations,
        "sets": {},
    }
    for name, cases in sets.items():
        log.info("%s: %d images", name, len(cases))
        # scikit-image's sparse solve takes minutes per Kodak photo with a large hole: evaluation set only
        result["sets"][name] = measure(cases, net, args.steps, network_at, reference=name == "eval")
    result["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inpaint_fill.json").write_text(json.dumps(result, indent=2) + "\n")
    names = list(next(iter(result["sets"].values()))["mean_psnr"])
    lines = [
        "# Inpainting pre-fill: biharmonic steps, evaluation set against the training domain",
        "",
        f"`{result['command'].strip()}`; mean PSNR in dB (RGB, whole composited image).",
        f"The network ({args.checkpoint or 'the shipped `inpaint` model'}) was trained on the"
        f" {result['network_fill']}-step fill.",
        "",
        "| | " + " | ".join(f"{k} (n={v['n']})" for k, v in result["sets"].items()) + " |",
        "|---|" + "---|" * len(result["sets"]),
    ]
    for row in names:
        cells = [f"{v['mean_psnr'][row]:.2f}" if row in v["mean_psnr"] else "not run" for v in result["sets"].values()]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    (out / "inpaint_fill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
