"""The training loop shared by both stages: data, optimiser, EMA, logging, validation, checkpoints.

Stage specifics (what the network computes and which losses) live in `stage1.py`/`stage2.py` as a
`StepModule`; this file only drives it. Determinism: weights are initialised from `seed`, every
batch comes from the seeded sample numbering of `datasets.py`, and the stage-2 diffusion noise of
step `s` is drawn from a generator seeded with (seed, s, rank); the resume state holds the model,
EMA, optimiser(s) and step, so a resumed run continues bit-exactly.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from models.checkpoint import save_checkpoint
from training import distributed as ddp
from training.config import TrainConfig, autocast_dtype, family, phases, to_dict
from training.datasets import PairedDataset, PatchSchedule, Phase, UnpairedDataset, make_loader
from training.degradations import make_degradation
from training.schedules import base_lr, encoder_steps, joint_lr, warmup_lr
from training.validate import Validator

STATE_FILE = "state.pt"
LOG_COLUMNS = ("step", "lr", "it_s", "data_wait", "loss", "rec", "diff", "percep", "g", "fm", "d",
               "val_psnr", "val_ssim", "val_psnr_y", "val_ssim_y")  # fmt: skip


def build_dataset(cfg: TrainConfig):
    scale = cfg.model_config().scale
    if cfg.paired:
        return PairedDataset(cfg.paired, scale=scale, seed=cfg.seed, augment=cfg.augment)
    if not cfg.data:
        raise ValueError("no training data: pass --data FOLDER [FOLDER ...] or --paired ROOT (with lq/ and gt/)")
    return UnpairedDataset(cfg.data, build_degradation(cfg), seed=cfg.seed, augment=cfg.augment)


def build_degradation(cfg: TrainConfig):
    opts: dict[str, Any] = {}
    if cfg.degradation_id() == "motion-blur":
        opts = {
            "p_real": cfg.blur_p_real,
            "kernel_sizes": cfg.blur_kernel_sizes,
            "p_identity": cfg.blur_p_identity,
            "p_mild": cfg.blur_p_mild,
            "mild_sizes": cfg.blur_mild_sizes,
            "noise_sigma": (cfg.blur_noise[0] / 255, cfg.blur_noise[1] / 255),
        }
    if cfg.degradation_id() == "lama-masks":
        opts = {"coverage": cfg.mask_coverage}
        if cfg.mask_dir:
            opts = {"mask_dir": cfg.mask_dir, "hole_is_white": cfg.mask_hole_is_white}
    return make_degradation(cfg.degradation_id(), cfg.model_config().scale, **opts)


class EMA:
    """Exponential moving average of a network's parameters (buffers copied)."""

    def __init__(self, net: nn.Module, decay: float, warmup: bool) -> None:
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        d = self.decay
        if self.warmup:
            d = min(d, (1 + step) / (10 + step))
        for e, p in zip(self.net.parameters(), net.parameters()):
            if d > 0:
                e.lerp_(p.detach(), 1 - d)
            else:
                e.copy_(p.detach())
        for e, b in zip(self.net.buffers(), net.buffers()):
            e.copy_(b)


class Progress:
    """A one-line progress display (loss, LR, it/s, ETA); plain lines when not on a terminal."""

    def __init__(self, label: str, total: int, start: int, enabled: bool) -> None:
        self.label, self.total, self.start = label, total, start
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def rate(self, step: int) -> float:
        dt = time.perf_counter() - self.t0
        return (step - self.start) / dt if dt > 0 else 0.0

    def show(self, step: int, logs: dict[str, float], lr: float) -> None:
        if not self.enabled:
            return
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate > 0 else math.inf
        eta_s = "--:--" if math.isinf(eta) else f"{int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
        terms = " ".join(f"{k} {v:.4f}" for k, v in logs.items())
        pct = 100 * step / max(1, self.total)
        line = f"[{self.label}] {step}/{self.total} {pct:3.0f}% {terms} lr {lr:.2e} {rate:.2f} it/s ETA {eta_s}"
        print(("\r" + line + "\x1b[K") if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)


class Trainer:
    """Runs one stage around a StepModule (`stage1.Stage1Step` / `stage2.Stage2Step`)."""

    def __init__(self, cfg: TrainConfig, step_module: nn.Module) -> None:
        self.cfg = cfg
        self.rank, self.world = ddp.rank(), ddp.world_size()
        self.device = step_module.device
        self.module = step_module
        self.net: nn.Module = step_module.net  # the trainable network (S1 or S2)
        self.ema = EMA(self.net, cfg.ema, cfg.ema_warmup)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.opt_enc = None
        if encoder_steps(cfg) > 0:
            enc = [p for n, p in self.net.named_parameters() if n.startswith(("condition.", "denoise."))]
            self.opt_enc = torch.optim.Adam(enc, lr=cfg.lr_encoder, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.disc = step_module.disc
        self.opt_d = None
        if self.disc is not None:
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.d_lr, betas=cfg.betas)
        self.wrapped: nn.Module = step_module
        self.wrapped_d = self.disc
        if self.world > 1:
            find_unused = encoder_steps(cfg) > 0
            self.wrapped = ddp.wrap(step_module, self.device, find_unused)
            if self.disc is not None:
                self.wrapped_d = ddp.wrap(self.disc, self.device, False)
        self.autocast = autocast_dtype(cfg, self.device.type)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast == torch.float16 else None
        self.step = 0
        self.dir = cfg.stage_dir
        self.stop_requested = False
        self.schedule = PatchSchedule([Phase(*p) for p in phases(cfg)])
        self.dataset = build_dataset(cfg)
        self.validator = Validator(cfg, build_degradation(cfg)) if cfg.val and self.rank == 0 else None

    # --- state -----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        s = {
            "step": self.step,
            "model": self.net.state_dict(),
            "ema": self.ema.net.state_dict(),
            "opt": self.opt.state_dict(),
            "config": to_dict(self.cfg),
        }
        if self.opt_enc is not None:
            s["opt_enc"] = self.opt_enc.state_dict()
        if self.disc is not None:
            s["disc"] = self.disc.state_dict()
            s["opt_d"] = self.opt_d.state_dict()
        if self.scaler is not None:
            s["scaler"] = self.scaler.state_dict()
        return s

    def load_state(self, path: Path) -> None:
        s = torch.load(path, map_location=self.device, weights_only=True)
        self.net.load_state_dict(s["model"])
        self.ema.net.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["opt"])
        if self.opt_enc is not None:
            self.opt_enc.load_state_dict(s["opt_enc"])
        if self.disc is not None:
            self.disc.load_state_dict(s["disc"])
            self.opt_d.load_state_dict(s["opt_d"])
        if self.scaler is not None and "scaler" in s:
            self.scaler.load_state_dict(s["scaler"])
        self.step = int(s["step"])
        old = s.get("config", {})
        ignore = {"steps", "resume", "progress", "log_every", "val_every", "save_every", "keep", "max_minutes",
                  "stop_at", "workers", "threads", "val", "val_images", "precision"}  # fmt: skip
        changed = {k for k in old if k not in ignore and old[k] != to_dict(self.cfg).get(k)}
        if changed and self.rank == 0:
            print(f"[training] resuming with changed settings: {', '.join(sorted(changed))}", file=sys.stderr)

    def save(self) -> None:
        """Resume state (atomic replace) plus the EMA weights as a numbered and a `latest` checkpoint."""
        if self.rank != 0:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / (STATE_FILE + ".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, self.dir / STATE_FILE)
        prov = {
            "task": self.cfg.task,
            "family": family(self.cfg.task, self.cfg.degradation),
            "degradation": self.cfg.degradation_id(),
            "stage": self.cfg.stage,
            "step": self.step,
            "steps_planned": self.cfg.steps,
            "weights": "ema" if self.cfg.ema > 0 else "raw",
            "data": list(self.cfg.data) or [self.cfg.paired],
            "wall_seconds": round(self.wall_before + time.perf_counter() - self.t_start, 1),
            "config": to_dict(self.cfg),
        }
        name = f"model_{self.step:07d}"
        save_checkpoint(self.ema.net, self.dir / f"{name}.safetensors", provenance=prov)
        save_checkpoint(self.ema.net, self.dir / "model_latest.safetensors", provenance=prov)
        olds = sorted(self.dir.glob("model_0*.safetensors"))
        for old in olds[: max(0, len(olds) - self.cfg.keep)]:
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)

    # --- one step --------------------------------------------------------------------------------
    def _set_lr(self, opt: torch.optim.Optimizer, lr: float) -> None:
        for g in opt.param_groups:
            g["lr"] = lr

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, float], float]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        warm = self.step < encoder_steps(self.cfg)
        if warm:
            opt, lr = self.opt_enc, warmup_lr(self.cfg, self.step)
        else:
            opt, lr = self.opt, (joint_lr(self.cfg, self.step) if self.cfg.stage == 2 else base_lr(self.cfg, self.step))
        self._set_lr(opt, lr)
        opt.zero_grad(set_to_none=True)
        noise_gen = torch.Generator().manual_seed(hash((self.cfg.noise_seed, self.step, self.rank)) % (2**62))
        amp = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None else _null()
        if self.disc is not None:
            self.disc.requires_grad_(False)
        with amp:
            loss, logs, fake = self.wrapped(batch, noise_gen, warm)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
        else:
            loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        if self.disc is not None and fake is not None:
            self.disc.requires_grad_(True)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss = self.module.disc_loss(self.wrapped_d, batch, fake)
            d_loss.backward()
            self.opt_d.step()
            logs["d"] = d_loss.item()
        return logs, lr

    # --- the loop --------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_requested:  # second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.stop_requested = True
        if self.rank == 0:
            print(f"\n[training] signal {signum}: finishing this step, saving and exiting", file=sys.stderr)

    def fit(self) -> Path:
        cfg = self.cfg
        state_path = self.dir / STATE_FILE
        self.wall_before = 0.0
        if cfg.resume:
            if not state_path.is_file():
                raise FileNotFoundError(f"--resume: no {state_path} to continue from")
            self.load_state(state_path)
            prev = self._previous_wall()
            self.wall_before = prev
        self.t_start = time.perf_counter()
        if self.step >= cfg.steps:
            if self.rank == 0:
                print(f"[training] {self.dir}: already at step {self.step} >= steps {cfg.steps}", file=sys.stderr)
            self.save()
            return self.dir / "model_latest.safetensors"
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        loader = make_loader(
            self.dataset, self.schedule, self.step, cfg.steps, cfg.workers, self.rank, self.world,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        label = f"s{cfg.stage} {cfg.task}"
        progress = Progress(label, cfg.steps, self.step, cfg.progress and self.rank == 0)
        log = self._open_log()
        t_wait = t_total = 0.0
        t_mark = time.perf_counter()
        window: dict[str, float] = {}
        n_window = 0
        try:
            for batch in loader:
                t_got = time.perf_counter()
                t_wait += t_got - t_mark
                logs, lr = self.train_step(batch)
                self.ema.update(self.net, self.step)
                self.step += 1
                for k, v in logs.items():
                    window[k] = window.get(k, 0.0) + v
                n_window += 1
                t_now = time.perf_counter()
                t_total += t_now - t_mark
                t_mark = t_now
                last = self.step >= cfg.steps
                if self.step % cfg.log_every == 0 or last:
                    avg = {k: v / n_window for k, v in window.items()}
                    progress.show(self.step, avg, lr)
                    row = {"step": self.step, "lr": lr, "it_s": progress.rate(self.step),
                           "data_wait": t_wait / max(t_total, 1e-9), **avg}  # fmt: skip
                    if self.validator is not None and (self.step % cfg.val_every == 0 or last):
                        row.update(self.validator.run(self.ema.net, self.step, self.dir))
                        t_mark = time.perf_counter()
                    log(row)
                    window, n_window = {}, 0
                elif self.validator is not None and self.step % cfg.val_every == 0:
                    log({"step": self.step, **self.validator.run(self.ema.net, self.step, self.dir)})
                    t_mark = time.perf_counter()
                if self.step % cfg.save_every == 0 and not last:
                    self.save()
                over_time = cfg.max_minutes > 0 and (time.perf_counter() - self.t_start) > 60 * cfg.max_minutes
                at_stop = 0 < cfg.stop_at <= self.step
                if self._agree_stop(self.stop_requested or over_time or at_stop):
                    break
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            progress.close()
        self.save()
        if self.stop_requested:
            raise SystemExit(130)
        return self.dir / "model_latest.safetensors"

    def _agree_stop(self, local: bool) -> bool:
        """All ranks stop at the same step (one asks, everybody follows)."""
        if self.world == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def _previous_wall(self) -> float:
        meta = self.dir / "model_latest.json"
        if meta.is_file():
            return float(json.loads(meta.read_text())["provenance"].get("wall_seconds", 0.0))
        return 0.0

    def _open_log(self):
        """CSV with a fixed header (missing values empty) plus a JSON-lines copy with every key."""
        if self.rank != 0:
            return lambda row: None
        self.dir.mkdir(parents=True, exist_ok=True)
        path, jpath = self.dir / "log.csv", self.dir / "log.jsonl"
        if not path.exists():
            path.write_text(",".join(LOG_COLUMNS) + "\n")

        def write(row: dict[str, Any]) -> None:
            with open(path, "a", newline="") as fh:
                csv.writer(fh).writerow([_fmt(row.get(k, "")) for k in LOG_COLUMNS])
            with open(jpath, "a") as fh:
                fh.write(json.dumps(row) + "\n")

        return write


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
