"""`python -m training probe`: score every saved checkpoint of a run on a slice of the issue-4 protocol.

Why: the training-time validation degrades its crops with the *training* mix, which says little
about the bar a task is judged by. The probe scores each `model_<step>.safetensors` of a run on a
fixed, small slice of the real evaluation (deblur: the first 8 Kodak24 images, image i blurred
with Levin kernel i, 256 px centre crops; inpaint: every other 256 px face with its protocol
mask), so the curve in a model card shows where a run is heading on the measure that matters.
Stage-1 checkpoints are scored with their GT-informed prior (an upper bound for stage 2), stage-2
checkpoints with the real prior from noise seed 0. Rows go to `<run>/probe.csv`; `--watch` keeps
polling until the run's stage 2 is complete, so it can follow a training in the background.

`--task deblur-noharm` scores what a deblur model must not damage, on the same 8 images and crops:
sharp (sigma 1/255 noise: mean PSNR against the clean crop), a mild 5-7 px shake (mean and worst gain
over the shaken input) and the Levin slice above (gain), into `<run>/probe-noharm.csv`;
`--checkpoint FILE` scores one stage-2 file (e.g. the shipped model) instead of a run.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from models import load_model, load_stage1_model
from models.inpainting import composite
from training.data import DATA_ROOT
from training.degradations import load_levin_kernels, network_input
from training.evaluate import NOHARM_SETS, blurred_kodak, inpaint_cases, noharm_cases, telea
from training.imageio import list_images, read_image
from training.metrics import psnr

Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # network input, GT, hole mask


def probe_set(task: str, root: Path = DATA_ROOT) -> tuple[list[Item], str, float]:
    """The fixed slice, the name of its baseline and the baseline's mean PSNR."""
    if task == "deblur":
        kernels = load_levin_kernels()
        items: list[Item] = []
        for i, path in enumerate(list_images([root / "val" / "Kodak24"])[:8]):
            gt = read_image(path)[:, 128:384, 256:512]
            items.append((blurred_kodak(gt, i, kernels), gt, None))
        return items, "blurred input", sum(psnr(x, gt) for x, gt, _ in items) / len(items)
    if task == "inpaint":
        cases = [c for i, c in enumerate(inpaint_cases(root)) if i % 2 == 0 and c.gt.shape[-2:] == (256, 256)]
        items = [(network_input(c.lq, c.mask), c.gt, c.mask) for c in cases]
        return items, "telea", sum(psnr(telea(c.lq, c.mask), c.gt) for c in cases) / len(cases)
    raise ValueError(f"no probe for task {task!r} (deblur, inpaint)")


@torch.no_grad()
def score(path: Path, stage: str, items: list[Item]) -> float:
    net = (load_stage1_model if stage == "s1" else load_model)(path).eval()
    total = 0.0
    for x, gt, mask in items:
        if stage == "s1":
            out = net(x[None], gt[None])[0]
        else:
            out = net(x[None], generator=torch.Generator().manual_seed(0))[0]
        out = out.clamp(0, 1)
        if mask is not None:
            out = composite(gt, mask, out)
        total += psnr(out, gt)
    return total / len(items)


NOHARM_CROP, NOHARM_IMAGES = 256, 8
NOHARM_COLUMNS = ("sharp_psnr", "mild_gain", "mild_worst", "levin_gain")


def noharm_items(root: Path = DATA_ROOT) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(set, input, clean) for the no-harm probe: sharp, mild shake, and the Levin slice."""
    items = [(c.set_name, c.lq, c.gt) for c in noharm_cases(root, crop=NOHARM_CROP, limit=NOHARM_IMAGES)]
    levin, _, _ = probe_set("deblur", root)
    return items + [("levin", x, gt) for x, gt, _ in levin]


@torch.no_grad()
def noharm_scores(path: Path, items: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    net = load_model(path).eval()
    gains: dict[str, list[float]] = {}
    sharp = []
    for set_name, x, gt in items:
        out = net(x[None], generator=torch.Generator().manual_seed(0))[0].clamp(0, 1)
        if set_name == NOHARM_SETS[0]:
            sharp.append(psnr(out, gt))
        else:
            gains.setdefault(set_name, []).append(psnr(out, gt) - psnr(x, gt))
    mild = gains[NOHARM_SETS[1]]
    return {
        "sharp_psnr": sum(sharp) / len(sharp),
        "mild_gain": sum(mild) / len(mild),
        "mild_worst": min(mild),
        "levin_gain": sum(gains["levin"]) / len(gains["levin"]),
    }


def probe_noharm(
    run: Path | None, checkpoint: Path | None, every: int, watch: bool, poll_s: float = 30.0, root: Path = DATA_ROOT
) -> Path:
    """Score every stage-2 checkpoint of `run` (or just `checkpoint`) on the no-harm slice."""
    items = noharm_items(root)
    if checkpoint is not None:
        scores = noharm_scores(checkpoint, items)
        out = checkpoint.with_suffix(".noharm.csv")
        out.write_text("checkpoint," + ",".join(NOHARM_COLUMNS) + "\n" + str(checkpoint) + ","
                       + ",".join(f"{scores[k]:.3f}" for k in NOHARM_COLUMNS) + "\n")  # fmt: skip
        print(out, scores, flush=True)
        return out
    assert run is not None
    out = run / "probe-noharm.csv"
    done: set[int] = set()
    if out.is_file():
        with out.open() as f:
            done = {int(r["step"]) for r in csv.DictReader(f)}
    else:
        out.write_text("step," + ",".join(NOHARM_COLUMNS) + "\n")
    while True:
        for stage, step, path in checkpoints(run, every):
            if stage != "s2" or step in done:
                continue
            try:
                scores = noharm_scores(path, items)
            except (OSError, ValueError, RuntimeError):  # being written or pruned by the trainer
                continue
            done.add(step)
            with out.open("a") as f:
                f.write(f"{step}," + ",".join(f"{scores[k]:.3f}" for k in NOHARM_COLUMNS) + "\n")
            print(f"s2 step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
        if not watch or stage2_complete(run):
            return out
        time.sleep(poll_s)


def checkpoints(run: Path, every: int) -> list[tuple[str, int, Path]]:
    found = []
    for stage in ("s1", "s2"):
        for path in sorted((run / stage).glob("model_0*.safetensors")):
            step = int(path.stem.split("_")[1])
            if step % every == 0:
                found.append((stage, step, path))
    return found


def stage2_complete(run: Path) -> bool:
    latest = run / "s2" / "model_latest.json"
    if not latest.is_file():
        return False
    prov = json.loads(latest.read_text())["provenance"]
    return prov["step"] >= prov["steps_planned"]


def probe(task: str, run: Path, every: int, watch: bool, poll_s: float = 30.0, root: Path = DATA_ROOT) -> Path:
    out = run / "probe.csv"
    done: set[tuple[str, int]] = set()
    if out.is_file():
        with out.open() as f:
            done = {(r["stage"], int(r["step"])) for r in csv.DictReader(f)}
    items, baseline_name, baseline = probe_set(task, root)
    if not out.is_file():
        out.write_text(f"stage,step,psnr\nbaseline ({baseline_name}),0,{baseline:.3f}\n")
    while True:
        for stage, step, path in checkpoints(run, every):
            if (stage, step) in done:
                continue
            try:
                value = score(path, stage, items)
            except (OSError, ValueError, RuntimeError):  # being written or pruned by the trainer
                continue
            done.add((stage, step))
            with out.open("a") as f:
                f.write(f"{stage},{step},{value:.3f}\n")
            print(f"{stage} step {step}: {value:.3f} dB ({baseline_name} {baseline:.3f})", flush=True)
        if not watch or stage2_complete(run):
            return out
        time.sleep(poll_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=("deblur", "inpaint", "deblur-noharm"))
    parser.add_argument("--run", type=Path, help="run folder with s1/ and s2/")
    parser.add_argument("--checkpoint", type=Path, help="deblur-noharm: score this one stage-2 file instead")
    parser.add_argument("--every", type=int, default=200, help="score steps that are multiples of this")
    parser.add_argument("--watch", action="store_true", help="keep polling until stage 2 is complete")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="the data root (`make data` fills it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.task == "deblur-noharm":
        print(probe_noharm(args.run, args.checkpoint, args.every, args.watch, root=args.data_root))
        return 0
    if args.run is None:
        parser.error("--run is required")
    print(probe(args.task, args.run, args.every, args.watch, root=args.data_root))
    return 0
