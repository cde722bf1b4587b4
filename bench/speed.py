"""Model-core speed benchmark (`make bench`): deblur preset, eager / TorchScript / ONNX Runtime.

Every variant runs in ONE process with the same allocator, round-robin per repetition, so the
machine's background load hits them alike; we report min and median per image. The baseline is
the upstream op sequence over the same weights (`bench.reference_ops`), checked to agree with
ours to float32 rounding before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.reference_ops import reference_forward
from models import DiffIRS2, get_preset, save_checkpoint


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def count_macs(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def build_model(variant: str, seed: int = 0) -> DiffIRS2:
    torch.manual_seed(seed)
    net = DiffIRS2(get_preset(variant)).eval()
    with torch.no_grad():  # non-trivial norms/temperatures so every parameter matters
        for name, p in net.named_parameters():
            if name.endswith(("body.weight", "temperature")):
                p.uniform_(0.5, 1.5)
    return net


def make_runners(net: DiffIRS2, workdir: Path, threads: int):
    import onnxruntime as ort

    from training.export import ExportOptions, export

    ckpt = save_checkpoint(net, workdir / "bench")
    export(ckpt, workdir, "bench", ExportOptions(graphs=("full",), check_batches=(1,)))
    ts = torch.jit.load(str(workdir / "bench.full.ts"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(workdir / "bench.full.onnx"), opts, providers=["CPUExecutionProvider"])
    return {
        "official-style eager (NCHW)": lambda lq, z: reference_forward(net, lq, z),
        "ours eager (NHWC, fused)": lambda lq, z: net(lq, noise=z),
        "ours TorchScript (frozen)": lambda lq, z: ts(lq, z),
        "ours ONNX Runtime CPU": lambda lq, z: torch.from_numpy(
            sess.run(None, {"lq": lq.numpy(), "noise": z.numpy()})[0]
        ),
    }


def bench_shipped(workdir: Path, threads: int, reps: int, out_side: int = 512) -> list[dict]:
    """Per-image time of each shipped default model for a `out_side`² output, every backend."""
    import onnxruntime as ort

    from models import load_model
    from models.tasks import TASKS
    from training.export import ExportOptions, export

    rows = []
    for task in TASKS.values():
        ckpt = task.default_checkpoint_path()
        if ckpt is None or not ckpt.is_file():
            continue
        net = load_model(ckpt)
        export(ckpt, workdir, task.name, ExportOptions(graphs=("full",), check_batches=(1,)))
        ts = torch.jit.load(str(workdir / f"{task.name}.full.ts"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(workdir / f"{task.name}.full.onnx"), opts, providers=["CPUExecutionProvider"])
        side = out_side // task.scale
        lq = torch.rand(1, net.config.image_channels, side, side, generator=torch.Generator().manual_seed(1))
        if task.needs_mask:  # a real input: binary mask (a quarter of the image a hole), RGB zeroed in it
            hole = torch.zeros(1, 1, side, side)
            hole[..., side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 1
            lq = torch.cat([lq[:, :3] * (1 - hole), hole], dim=1)
        z = torch.randn(1, 256, generator=torch.Generator().manual_seed(2))
        macs = count_macs(lambda net=net, lq=lq, z=z: net(lq, noise=z))
        runners = {
            "eager": lambda net=net, lq=lq, z=z: net(lq, noise=z),
            "torchscript": lambda ts=ts, lq=lq, z=z: ts(lq, z),
            "onnxruntime": lambda sess=sess, lq=lq, z=z: sess.run(None, {"lq": lq.numpy(), "noise": z.numpy()}),
        }
        times: dict[str, list[float]] = {name: [] for name in runners}
        for run in runners.values():
            run()  # warm-up
        for _ in range(reps):
            for name, run in runners.items():
                times[name].append(_timed(run))
        for name, ts_ in times.items():
            rows.append(
                {
                    "task": task.name,
                    "preset": net.config.name,
                    "backend": name,
                    "output": f"{out_side}²",
                    "min_s": min(ts_),
                    "median_s": statistics.median(ts_),
                    "gmacs": macs / 1e9,
                }
            )
            print(
                f"shipped {task.name:8s} {name:12s} min {min(ts_):.3f}s med {statistics.median(ts_):.3f}s", flush=True
            )
    return rows


def shipped_table(shipped: list[dict], reps: int) -> list[str]:
    lines = [
        f"## Shipped default models, 512² output ({reps} reps, batch 1)",
        "",
        "| task | preset | backend | min s | median s | GMAC |",
        "|---|---|---|---|---|---|",
    ]
    return lines + [
        f"| {r['task']} | {r['preset']} | {r['backend']} | {r['min_s']:.3f} | {r['median_s']:.3f} | {r['gmacs']:.1f} |"
        for r in shipped
    ]


def shipped_only(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        shipped = bench_shipped(Path(tmp), args.threads, args.reps)
    meta = {"threads": args.threads, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "loadavg_after": os.getloadavg()}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed-shipped.json").write_text(json.dumps({"meta": meta, "shipped": shipped}, indent=2) + "\n")
    head = [f"# Shipped models at 512², {args.threads} threads", "", f"Measured {meta['date']} by "
            f"`python -m bench.speed --shipped-only`; load average after: "
            f"{', '.join(f'{x:.2f}' for x in meta['loadavg_after'])}.", ""]  # fmt: skip
    (args.out / "speed-shipped.md").write_text("\n".join(head + shipped_table(shipped, args.reps)) + "\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--variant", default="deblur")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--reps-large", type=int, default=3, help="repetitions for 256^2 and above")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-shipped", action="store_true", help="skip the shipped-model 512² timings")
    parser.add_argument(
        "--shipped-only", action="store_true", help="only the shipped-model timings, into speed-shipped.{json,md}"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.shipped_only:
        return shipped_only(args)
    net = build_model(args.variant)
    ceiling = matmul_gflops()
    results = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        runners = make_runners(net, Path(tmp), args.threads)
        for size in (int(s) for s in args.sizes.split(",")):
            lq1 = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
            macs = count_macs(lambda lq1=lq1: reference_forward(net, lq1, torch.zeros(1, 256)))
            for batch in (int(b) for b in args.batches.split(",")):
                lq = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size + batch))
                z = torch.randn(batch, 256, generator=torch.Generator().manual_seed(batch))
                ref = reference_forward(net, lq, z)
                errors, times = {}, {name: [] for name in runners}
                for name, run in runners.items():  # warm-up + agreement with the baseline
                    out = run(lq, z)
                    errors[name] = ((out - ref).abs().max() / ref.abs().max()).item()
                reps = args.reps if size < 256 else args.reps_large
                for _ in range(reps):
                    for name, run in runners.items():
                        times[name].append(_timed(lambda run=run, lq=lq, z=z: run(lq, z)) / batch)
                base = statistics.median(times["official-style eager (NCHW)"])
                for name, ts in times.items():
                    row = {
                        "variant": name,
                        "size": size,
                        "batch": batch,
                        "min_s": min(ts),
                        "median_s": statistics.median(ts),
                        "reps": len(ts),
                        "rel_err_vs_baseline": errors[name],
                        "speedup_vs_baseline_median": base / statistics.median(ts),
                        "gmacs_per_image": macs / 1e9,
                        "gflops_achieved_min": 2 * macs / min(ts) / 1e9,
                    }
                    row["fraction_of_matmul_ceiling"] = row["gflops_achieved_min"] / ceiling
                    results.append(row)
                    print(
                        f"{size:4d}² b{batch} {name:30s} min {row['min_s']:.3f}s med {row['median_s']:.3f}s "
                        f"x{row['speedup_vs_baseline_median']:.2f} err {errors[name]:.1e}",
                        flush=True,
                    )
    shipped = []
    if not args.skip_shipped:
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
            shipped = bench_shipped(Path(tmp), args.threads, args.reps)
    meta = {
        "model": args.variant,
        "threads": args.threads,
        "torch": torch.__version__,
        "matmul_fp32_gflops_2048": ceiling,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "allocator": "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc",
        "loadavg_after": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(
        json.dumps({"meta": meta, "results": results, "shipped": shipped}, indent=2) + "\n"
    )
    lines = [
        f"# Model speed: `{args.variant}` preset, {args.threads} threads, {meta['allocator']} allocator",
        "",
        f"Measured {meta['date']} by `make bench` (bench/speed.py); per-image seconds, min / median over "
        f"{args.reps} reps (128²) and {args.reps_large} reps (256²), variants round-robin in one process. "
        f"fp32 matmul ceiling (2048³): {ceiling:.0f} GFLOP/s. Load average after: "
        f"{', '.join(f'{x:.2f}' for x in meta['loadavg_after'])}.",
        "",
        "| size | batch | variant | min s | median s | speed-up (median) | GMAC/img | GFLOP/s (min) "
        "| of ceiling | rel. err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['size']}² | {r['batch']} | {r['variant']} | {r['min_s']:.3f} | {r['median_s']:.3f} | "
            f"{r['speedup_vs_baseline_median']:.2f}× | {r['gmacs_per_image']:.2f} | {r['gflops_achieved_min']:.0f} | "
            f"{r['fraction_of_matmul_ceiling']:.0%} | {r['rel_err_vs_baseline']:.1e} |"
        )
    if shipped:
        lines += ["", *shipped_table(shipped, args.reps)]
    (args.out / "speed.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
