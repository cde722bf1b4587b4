"""`python -m training evaluate`: PSNR/SSIM of a model and of the task's classic baseline.

Standard protocols (issue 4; the numbers in the model cards come from here):

* `sr-x4`: Set5, Set14, BSD100, Urban100 (`val/`), GT mod-cropped to 4; Y-channel PSNR/SSIM with a
  4-pixel border (BT.601 Y of the 8-bit images, as basicsr computes it). Two protocols, both reported
  by default (`--protocol`): "ours", LR = the training package's antialiased bicubic (8-bit), baseline
  = torch bicubic upscaling; "standard" (the SR literature's), LR = MATLAB's bicubic `imresize`
  (`training.matlab_resize`, 8-bit), baseline = MATLAB bicubic upscaling.
* `deblur`: Kodak24, image i (sorted) blurred with Levin kernel (i mod 8) + Gaussian noise
  sigma = 1/255 from seed i, 8-bit; RGB PSNR/SSIM on the full image; baseline = the blurred input.
  Plus the real GoPro pairs in `tasks/deblur/gopro` (full 1280x720 frames).
  `--protocol noharm` adds what a deblur model must not damage: Kodak24 sharp (identity kernel,
  sigma = 1/255 noise, seed i) and Kodak24 with a mild centred random shake (image i: a 5 px
  kernel for even i, 7 px for odd, from `random_trajectory_kernel` with seed 1000 + i, path length
  = size - 1, same noise), each against its clean image; bars in `NOHARM_BARS`.
* `inpaint`: CelebA-HQ + FFHQ faces (face j gets mask j mod M of the 256x256 hole masks; the
  DDNM masks are keep-masks and are inverted, the RePaint checkerboard is not a hole mask and
  is left out) and the Places2 photos with their own masks (white = hole); RGB PSNR/SSIM on the
  whole composited image; baselines = OpenCV Telea and scikit-image biharmonic inpainting.

Also generic: `--folder DIR` degrades clean images with the task's seeded degradation, and
`--paired DIR` reads lq/ + gt/ folders. Results go to JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models import load_model
from models.checkpoint import sha256_file
from models.diffir import DiffIRS2
from models.inpainting import FILL_BIHARMONIC_ITERATIONS, composite, smooth_fill
from models.tasks import get_task
from training.data import DATA_ROOT
from training.degradations import (
    bicubic_down,
    bicubic_up,
    convolve,
    load_levin_kernels,
    make_degradation,
    mod_crop,
    network_input,
    quantize,
    random_trajectory_kernel,
)
from training.imageio import list_images, read_image, read_mask, to_uint8, write_image
from training.matlab_resize import imresize
from training.metrics import psnr, ssim

NOISE_SIGMA = 1.0 / 255
SR_PROTOCOLS = ("ours", "standard")
NOHARM_SETS = ("Kodak24 sharp", "Kodak24 mild shake")
NOHARM_BARS = {
    "sharp_min_mean_psnr": 40.0,  # output vs clean, dB, mean over Kodak24 sharp
    "mild_min_mean_gain": 0.3,  # dB over the shaken input, mean over Kodak24 mild shake
    "mild_min_worst_gain": -0.5,  # dB, the worst single image
    "levin_min_mean_gain": 2.0,  # dB over the blurred input, Kodak24 + Levin kernels
}


@dataclass
class Case:
    """One evaluation image: the network input, the GT, the hole mask (inpainting) and baselines."""

    set_name: str
    name: str
    lq: torch.Tensor
    gt: torch.Tensor
    mask: torch.Tensor | None = None


# --- protocols ---------------------------------------------------------------------------------
def sr_lr(gt: torch.Tensor, scale: int, protocol: str) -> torch.Tensor:
    """The LR input of a protocol: ours (torch antialiased bicubic) or standard (MATLAB imresize)."""
    if protocol == "standard":
        return imresize(gt, 1 / scale)
    if protocol == "ours":
        return bicubic_down(gt, scale)
    raise ValueError(f"unknown SR protocol {protocol!r}; known: {', '.join(SR_PROTOCOLS)}")


def sr_cases(root: Path, scale: int, sets: Sequence[str], protocol: str = "ours") -> Iterator[Case]:
    for set_name in sets:
        for p in list_images([root / "val" / set_name]):
            gt = mod_crop(read_image(p), scale)
            yield Case(set_name, p.stem, sr_lr(gt, scale, protocol), gt)


def blurred_kodak(gt: torch.Tensor, i: int, kernels: list[np.ndarray]) -> torch.Tensor:
    blurred = convolve(gt, kernels[i % len(kernels)])
    noise = torch.randn(blurred.shape, generator=torch.Generator().manual_seed(i))
    return quantize(blurred + NOISE_SIGMA * noise)


def noisy(img: torch.Tensor, seed: int) -> torch.Tensor:
    noise = torch.randn(img.shape, generator=torch.Generator().manual_seed(seed))
    return quantize(img + NOISE_SIGMA * noise)


def mild_shake_kernel(i: int) -> np.ndarray:
    """Image i's mild shake: a centred random trajectory, 5 px (even i) or 7 px (odd i) wide."""
    size = 5 if i % 2 == 0 else 7
    return random_trajectory_kernel(np.random.default_rng(1000 + i), size, float(size - 1))


def noharm_cases(root: Path, crop: int = 0, limit: int = 0) -> Iterator[Case]:
    """Kodak24 sharp (+ sigma 1/255) and with a mild 5-7 px shake; `crop`/`limit` for a quick probe."""
    paths = list_images([root / "val" / "Kodak24"])
    paths = paths[:limit] if limit else paths
    gts = [_centre(read_image(p), crop) for p in paths]
    for i, (p, gt) in enumerate(zip(paths, gts)):
        yield Case(NOHARM_SETS[0], p.stem, noisy(gt, i), gt)
    for i, (p, gt) in enumerate(zip(paths, gts)):
        yield Case(NOHARM_SETS[1], p.stem, noisy(convolve(gt, mild_shake_kernel(i)), i), gt)


def _centre(img: torch.Tensor, crop: int) -> torch.Tensor:
    if not crop:
        return img
    h, w = img.shape[-2:]
    y, x = (h - crop) // 2, (w - crop) // 2
    return img[:, y : y + crop, x : x + crop].contiguous()


def noharm_verdict(result: dict) -> dict[str, float | bool]:
    """The no-harm numbers and whether each bar is met, from an `evaluate` result with both sets
    (and Kodak24 for the Levin bar, when present)."""
    rows = result["images"]

    def gains(set_name: str) -> list[float]:
        return [r["model"]["psnr"] - r["blurred input"]["psnr"] for r in rows if r["set"] == set_name]

    sharp = [r["model"]["psnr"] for r in rows if r["set"] == NOHARM_SETS[0]]
    mild = gains(NOHARM_SETS[1])
    out: dict[str, float | bool] = {
        "sharp_mean_psnr": float(np.mean(sharp)),
        "sharp_min_psnr": float(np.min(sharp)),
        "mild_mean_gain": float(np.mean(mild)),
        "mild_worst_gain": float(np.min(mild)),
    }
    ok = out["sharp_mean_psnr"] >= NOHARM_BARS["sharp_min_mean_psnr"]
    ok &= out["mild_mean_gain"] >= NOHARM_BARS["mild_min_mean_gain"]
    ok &= out["mild_worst_gain"] >= NOHARM_BARS["mild_min_worst_gain"]
    levin = gains("Kodak24")
    if levin:
        out["levin_mean_gain"] = float(np.mean(levin))
        ok &= out["levin_mean_gain"] >= NOHARM_BARS["levin_min_mean_gain"]
    out["bars_met"] = bool(ok)
    return out


def deblur_cases(root: Path) -> Iterator[Case]:
    kernels = load_levin_kernels()
    for i, p in enumerate(list_images([root / "val" / "Kodak24"])):
        gt = read_image(p)
        yield Case("Kodak24", p.stem, blurred_kodak(gt, i, kernels), gt)
    gopro = root / "tasks" / "deblur" / "gopro"
    for p in sorted(gopro.glob("*_blur*.png")):
        sharp = p.with_name(p.name.replace("_blur", "_sharp"))
        yield Case("GoPro", p.stem.replace("_blur", ""), read_image(p), read_image(sharp))


def face_masks(root: Path) -> list[np.ndarray]:
    """The 256x256 hole masks, each converted to 1 = hole by its source's convention (MANIFEST)."""
    mdir = root / "tasks" / "inpaint" / "masks"
    masks = []
    for p in list_images([mdir]):
        if p.stem.startswith("repaint_keep"):  # a 2x SR keep pattern, not a hole mask
            continue
        m = read_mask(p, hole_is_white=not p.stem.startswith("ddnm"))
        if m.shape == (256, 256):
            masks.append(m)
    return masks


def inpaint_cases(root: Path) -> Iterator[Case]:
    masks = face_masks(root)
    faces = root / "tasks" / "inpaint" / "faces"
    j = 0
    for set_name in ("celebahq256", "ffhq256"):
        for p in list_images([faces / set_name]):
            gt = read_image(p)
            m = torch.from_numpy(masks[j % len(masks)])[None]
            j += 1
            yield Case(set_name, p.stem, gt * (1 - m), gt, m)
    places = root / "tasks" / "inpaint" / "places2"
    for p in sorted(places.glob("*_raw.png")):
        gt = read_image(p)
        m = torch.from_numpy(read_mask(p.with_name(p.name.replace("_raw", "_mask")), hole_is_white=True))[None]
        yield Case("places2", p.stem.replace("_raw", ""), gt * (1 - m), gt, m)


def folder_cases(folder: Path, task: str, seed: int) -> Iterator[Case]:
    spec = get_task(task)
    deg = make_degradation(spec.degradation, spec.scale)
    for i, p in enumerate(list_images([folder])):
        gt = mod_crop(read_image(p), spec.scale)
        out = deg.apply(gt, deg.draw(np.random.default_rng([seed, i]), gt.shape[-2], gt.shape[-1]))
        yield Case(folder.name, p.stem, out.lq, gt, out.mask)


def paired_cases(root: Path) -> Iterator[Case]:
    lq_by = {p.stem: p for p in list_images([root / "lq"])}
    for p in list_images([root / "gt"]):
        yield Case(root.name, p.stem, read_image(lq_by[p.stem]), read_image(p))


# --- baselines -----------------------------------------------------------------------------------
def telea(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    import cv2

    arr = to_uint8(img)
    m = (mask[0].numpy() > 0.5).astype(np.uint8) * 255
    return torch.from_numpy(cv2.inpaint(arr, m, 3, cv2.INPAINT_TELEA)).permute(2, 0, 1).float() / 255


def biharmonic(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from skimage.restoration import inpaint_biharmonic

    arr = img.permute(1, 2, 0).numpy().astype(np.float64)
    out = inpaint_biharmonic(arr, mask[0].numpy() > 0.5, channel_axis=-1)
    return torch.from_numpy(out).permute(2, 0, 1).float().clamp(0, 1)


def baselines(
    kind: str, scale: int, protocol: str = "ours", fill_iterations: int = FILL_BIHARMONIC_ITERATIONS
) -> dict[str, Callable[[Case], torch.Tensor]]:
    if kind == "sr" and protocol == "standard":
        return {"bicubic": lambda c: imresize(c.lq, scale, quantize_8bit=False).clamp(0, 1)}
    if kind == "sr":
        return {"bicubic": lambda c: bicubic_up(c.lq, scale)}
    if kind == "deblur":
        return {"blurred input": lambda c: c.lq}
    return {
        "telea": lambda c: telea(c.lq, c.mask),
        "biharmonic": lambda c: biharmonic(c.lq, c.mask),
        # Not a bar: what the `smooth` hole pre-fill of our inpainting presets gives alone, so the
        # table shows what the network adds on top of it (`fill_iterations`: the evaluated model's).
        "pre-fill alone": lambda c: smooth_fill(c.lq[None], c.mask[None], fill_iterations)[0].clamp(0, 1),
    }


# --- running -------------------------------------------------------------------------------------
@torch.no_grad()
def restore(net: DiffIRS2, case: Case, seed: int) -> torch.Tensor:
    x = network_input(case.lq, case.mask)[None]
    out = net.forward_any_size(x, generator=torch.Generator().manual_seed(seed))[0].clamp(0, 1)
    if case.mask is not None:  # composite: known pixels are the input's (the official predictor does this)
        out = composite(case.gt, case.mask, out)
    return out


def evaluate(
    net: DiffIRS2 | None,
    cases: Iterator[Case],
    kind: str,
    scale: int,
    seed: int = 0,
    save_dir: Path | None = None,
    skip_baselines: bool = False,
    log: Callable[[str], None] = print,
    protocol: str = "ours",
) -> dict:
    border = scale if kind == "sr" else 0
    y = kind == "sr"
    fill = net.config.fill_biharmonic_iterations if net is not None else FILL_BIHARMONIC_ITERATIONS
    methods = {} if skip_baselines else baselines(kind, scale, protocol, fill)
    rows = []
    for case in cases:
        outputs: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        if net is not None:
            outputs["model"] = restore(net, case, seed)
        dt = time.perf_counter() - t0
        for name, fn in methods.items():
            outputs[name] = fn(case)
        row = {"set": case.set_name, "image": case.name, "seconds": round(dt, 3)}
        for name, out in outputs.items():
            row[name] = {"psnr": psnr(out, case.gt, border, y), "ssim": ssim(out, case.gt, border, y)}
            if save_dir is not None:
                write_image(save_dir / case.set_name / f"{case.name}_{name.replace(' ', '_')}.png", out)
        rows.append(row)
        log(
            f"  {case.set_name}/{case.name}: "
            + "  ".join(f"{k} {v['psnr']:.2f}" for k, v in row.items() if isinstance(v, dict))
        )
    return summarise(rows, kind)


def summarise(rows: list[dict], kind: str) -> dict:
    methods = [k for k in rows[0] if isinstance(rows[0][k], dict)] if rows else []
    sets = list(dict.fromkeys(r["set"] for r in rows))
    groups = {s: [r for r in rows if r["set"] == s] for s in sets}
    if len(sets) > 1:
        groups["all"] = rows
    means = {
        s: {m: {k: float(np.mean([r[m][k] for r in rs])) for k in ("psnr", "ssim")} for m in methods} | {"n": len(rs)}
        for s, rs in groups.items()
    }
    return {"metric": "Y, border 4" if kind == "sr" else "RGB, full image", "means": means, "images": rows}


def markdown_table(result: dict) -> str:
    means = result["means"]
    methods = [m for m in next(iter(means.values())) if m != "n"]
    head = "| set | n | " + " | ".join(f"{m} PSNR / SSIM" for m in methods) + " |"
    lines = [head, "|" + "---|" * (2 + len(methods))]
    for s, v in means.items():
        cells = " | ".join(f"{v[m]['psnr']:.2f} / {v[m]['ssim']:.4f}" for m in methods)
        lines.append(f"| {s} | {v['n']} | {cells} |")
    return f"PSNR in dB ({result['metric']}).\n\n" + "\n".join(lines) + "\n"


SR_SETS = ("Set5", "Set14", "BSD100", "Urban100")


def protocol_cases(kind: str, scale: int, root: Path, protocol: str, sets: Sequence[str] = SR_SETS) -> Iterator[Case]:
    """The evaluation cases of a task's protocol (sr: "ours" | "standard"; deblur: "ours" | "noharm" |
    "all"), in the order the committed results list them."""
    if kind == "sr":
        return sr_cases(root, scale, sets, protocol)
    if kind == "deblur" and protocol == "noharm":
        return noharm_cases(root)
    if kind == "deblur" and protocol == "all":
        return itertools.chain(deblur_cases(root), noharm_cases(root))
    if kind == "deblur":
        return deblur_cases(root)
    return inpaint_cases(root)


def _display_path(path: str) -> str:
    """Relative to the working folder when inside it (a committed result names no machine's paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=("deblur", "sr-x4", "inpaint"))
    parser.add_argument("--checkpoint", help="stage-2 checkpoint (default: the task's shipped weights)")
    parser.add_argument("--data-root", default=str(DATA_ROOT), help="the data root (`make data` fills it)")
    parser.add_argument("--folder", help="evaluate on clean images degraded with the task's seeded degradation")
    parser.add_argument("--paired", help="evaluate on lq/ + gt/ folders")
    parser.add_argument("--sets", nargs="+", default=list(SR_SETS), help="sr-x4 sets")
    parser.add_argument(
        "--protocol",
        default="",
        choices=("", "ours", "standard", "both", "noharm", "all"),
        help="sr-x4: ours | standard (MATLAB imresize LR) | both (default); deblur: ours (Kodak24 + "
        "Levin, GoPro; default) | noharm (sharp and mild-shake Kodak24) | all",
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the model's prior (x_T)")
    parser.add_argument("--degrade-seed", type=int, default=0, help="seed of --folder degradations")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="", help="folder for results.json, results.md (and --save-images)")
    parser.add_argument("--save-images", action="store_true")
    parser.add_argument("--baselines-only", action="store_true")
    parser.add_argument("--skip-baselines", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_task(args.task)
    kind, scale = spec.config.kind, spec.scale
    root = Path(args.data_root)
    protocol = args.protocol or {"sr": "both", "deblur": "ours"}.get(kind, "ours")
    sr_protocols = [p for p in SR_PROTOCOLS if protocol in (p, "both")]
    if args.folder:
        cases = folder_cases(Path(args.folder), args.task, args.degrade_seed)
    elif args.paired:
        cases = paired_cases(Path(args.paired))
    else:
        cases = protocol_cases(kind, scale, root, sr_protocols[0] if kind == "sr" else protocol, args.sets)
    net = None
    ckpt = args.checkpoint or str(spec.default_checkpoint_path())
    if not args.baselines_only:
        net = load_model(ckpt)
    out = Path(args.out) if args.out else None
    save = out / "images" if out and args.save_images else None
    sr_first = sr_protocols[0] if kind == "sr" else "ours"
    result = evaluate(net, cases, kind, scale, args.seed, save, args.skip_baselines, protocol=sr_first)
    result["task"], result["checkpoint"] = args.task, None if net is None else _display_path(ckpt)
    result["sha256"] = None if net is None else sha256_file(Path(ckpt))  # which weights these numbers are for
    result["command"] = "python -m training evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    tables = [markdown_table(result)]
    if kind == "sr" and not (args.folder or args.paired):
        result["protocol"] = sr_first
        for other in sr_protocols[1:]:
            more = evaluate(net, sr_cases(root, scale, args.sets, other), kind, scale, args.seed, None,
                            args.skip_baselines, protocol=other)  # fmt: skip
            result[other] = more
            tables.append(f"Protocol: {other}.\n\n" + markdown_table(more))
        tables[0] = f"Protocol: {sr_first}.\n\n" + tables[0]
    if kind == "deblur" and net is not None and protocol in ("noharm", "all") and not args.skip_baselines:
        result["noharm"] = noharm_verdict(result)
        tables.append("No harm: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in result["noharm"].items()) + "\n")  # fmt: skip
    table = "\n".join(tables)
    print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "results.md").write_text(table)
    return 0
