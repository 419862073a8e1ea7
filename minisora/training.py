"""The training driver every trainer uses (train_vqvae.py, train_dit.py, iddpm.py, train_latent_*.py):

    out = start_run(args, "iddpm")              # seed, run folder, config.json (a resumed run keeps its folder)
    module = LitDiffusion(...)                   # the script builds its LightningModule and data
    fit(args, module, train_data, val_data, out=out, script="iddpm", checkpoints=dict(...))

Run folder: runs/<script>/<run name>/ with config.json (all args), metrics.csv (every logged row; a resumed
run keeps the rows up to its checkpoint), samples/ (mp4 + gif) and checkpoints/ (last.ckpt, written also at
the step training stops, + periodic ones). wandb (--track) gets the same metrics and videos under one run; it
is never required (WANDB_MODE=offline works). Flags: minisora/cli.py.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import random
import time
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

from minisora.checkpoint import AtomicCheckpointIO, checkpoint_step
from minisora.files import atomic_write

# Known console noise, each silenced by its text (never all warnings): the EMA copy of a diffusion model is
# in eval mode on purpose; Lightning's product tips; diffusers' pytree deprecation.
NOISE = [r"Found \d+ module\(s\) in eval mode", r".*_register_pytree_node is deprecated",
         r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"The `local_dir_use_symlinks` argument is deprecated",
         r"The '(train|val)_dataloader' does not have many workers", r"Checkpoint directory .* exists and is not empty"]


def quiet_console() -> None:
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)

    class _NoTips(logging.Filter):
        def filter(self, record):
            return not str(record.getMessage()).startswith("💡 Tip")

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoTips())


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX). oneDNN also "supports" bf16 on plain
    AVX512 by emulation, but there a bf16-mixed VAE step took 2.2x the fp32 step (measured on a 2-core
    AVX512 machine without avx512_bf16), so only native support picks bf16."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def default_precision() -> str:
    """bf16-mixed on GPUs with bf16 and on CPUs with native bf16 matmuls (AVX512-BF16/AMX: ~1.8x faster
    steps there), else 32-true."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999),
          matrices_only: bool = False, fused: bool = True) -> torch.optim.AdamW:
    """AdamW for every training script. matrices_only: weight decay on >= 2-D weights only (not biases,
    norms). fused: torch's single-kernel AdamW (CUDA and CPU; 3-4x faster steps than the per-tensor loop on
    CPU); pass can_fuse(trainer) from a LightningModule."""
    params = [p for p in model.parameters() if p.requires_grad]
    if matrices_only:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    else:
        groups = [{"params": params, "weight_decay": weight_decay}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def can_fuse(trainer) -> bool:
    """Fused optimizers unscale fp16 gradients inside their step, so under a GradScaler (16-mixed) GradClip
    would see scaled gradients: fuse everywhere else (32-true, bf16-mixed)."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is None


def _grad_clip_callback(value: float, start: int = 0):
    from lightning.pytorch.callbacks import Callback

    class GradClip(Callback):
        """Logs train/grad_norm (global, before clipping) and clips it to `value` from optimizer step `start`
        on (upstream's --start_clip_iter; value 0: no clipping). Used instead of Trainer(gradient_clip_val),
        which Lightning refuses with fused optimizers under any mixed precision although only a GradScaler
        makes it wrong (see can_fuse); the hook runs after the scaler has unscaled the gradients."""

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if not params:
                return
            if value > 0 and trainer.global_step >= start:
                norm = torch.nn.utils.clip_grad_norm_(params, value)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            pl_module.log("train/grad_norm", norm)

    return GradClip()


def parse_devices(devices: str):
    if devices == "auto":
        return "auto"
    if "," in devices:
        return [int(d) for d in devices.split(",") if d]
    return int(devices)


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def start_run(a, script: str) -> Path:
    """Seed everything, pick and make the run folder, write config.json; returns the folder.

    --resume_from is resolved to a local checkpoint (a clear exit when it cannot be used) and, without
    --run_name, the run continues in the checkpoint's own folder (its metrics.csv keeps its history). A new
    run never reuses a folder that holds another run's checkpoints: that is refused with what to do instead."""
    import lightning as L

    quiet_console()
    L.seed_everything(a.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    if a.resume_from:
        from minisora.resolve import resolve_checkpoint_path
        try:
            a.resume_from = str(resolve_checkpoint_path(a.resume_from))
        except (ValueError, FileNotFoundError, ConnectionError) as e:
            raise SystemExit(f"error: --resume_from {a.resume_from}: {e}") from None
        ck = Path(a.resume_from)
        if a.run_name is None and ck.parent.name == "checkpoints" and ck.parent.parent.parent.name == script:
            a.run_name, a.output_dir = ck.parent.parent.name, str(ck.parent.parent.parent.parent)
    # DDP re-launches this script for the other ranks, which inherit the environment: one timestamp for all
    inherited = None if _is_rank_zero() else os.environ.get("MINISORA_RUN_NAME")
    name = a.run_name or inherited or time.strftime("%Y%m%d-%H%M%S")
    os.environ["MINISORA_RUN_NAME"] = a.run_name = name
    d = Path(a.output_dir) / script / name
    if not a.resume_from and _is_rank_zero() and any((d / "checkpoints").glob("*.ckpt")):
        raise SystemExit(f"error: {d} holds another run's checkpoints. Continue it with --resume_from "
                         f"{d / 'checkpoints' / 'last.ckpt'}, or pick another --run_name")
    (d / "samples").mkdir(parents=True, exist_ok=True)
    (d / "checkpoints").mkdir(parents=True, exist_ok=True)
    if _is_rank_zero():
        atomic_write(d / "config.json", json.dumps(vars(a), indent=2, default=str))
    return d


def _metrics_logger(path: Path, keep_until: int | None):
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.utilities import rank_zero_only

    class MetricsCSV(Logger):
        """metrics.csv: one row per logged step, the columns the union of all keys, rewritten atomically every
        few seconds and at the end. keep_until (a resumed run's checkpoint step): the rows of the optimizer steps
        before it are kept (a row's step is the global step its batch started at), later ones are replaced by
        what the resumed run logs; None: a new file."""

        def __init__(self):
            super().__init__()
            self.rows, self._written = [], 0.0
            if keep_until is not None and path.exists():
                with open(path, newline="") as f:
                    self.rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) < keep_until]

        name = property(lambda self: "csv")
        version = property(lambda self: "")
        save_dir = property(lambda self: str(path.parent))
        log_dir = property(lambda self: str(path.parent))

        @rank_zero_only
        def log_hyperparams(self, params, *args, **kwargs):  # config.json holds them
            pass

        @rank_zero_only
        def log_metrics(self, metrics, step=None):
            self.rows.append({"step": step, **{k: float(v) for k, v in metrics.items()}})

        @rank_zero_only
        def save(self):
            if time.time() - self._written > 5:
                self._write()

        @rank_zero_only
        def finalize(self, status):
            self._write()

        def _write(self):
            cols = list(dict.fromkeys(k for r in self.rows for k in r))
            lines = [",".join(cols)] + [",".join("" if r.get(k) in (None, "") else str(r[k]) for k in cols)
                                        for r in self.rows]
            atomic_write(path, "\n".join(lines) + "\n")
            self._written = time.time()

    return MetricsCSV()


def make_loggers(args, out: Path):
    resume_step = checkpoint_step(args.resume_from) if getattr(args, "resume_from", None) else None
    loggers = [_metrics_logger(out / "metrics.csv", resume_step)]
    if args.track:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=args.project, name=out.name, save_dir=str(out), log_model="all",
                                   config=vars(args)))
    return loggers


def checkpoint_callback(**kw):
    """Lightning's ModelCheckpoint (kw as for it, save_last=True) that also writes last.ckpt at the step where
    training stops (--max_steps, --max_time, --epochs or should_stop), from inside the loop, so the file
    resumes like any other Lightning checkpoint: ModelCheckpoint alone writes it after the loop has ended (its
    on_train_end), which restarts the epoch accounting wrongly on resume. Public API only (trainer.
    save_checkpoint, Logger.after_save_checkpoint); tests/test_training.py pins the behaviour."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StopCheckpoint(ModelCheckpoint):
        stop_saved = False

        def _save_at_stop(self, trainer):
            if self.stop_saved or trainer.sanity_checking:
                return
            path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            trainer.save_checkpoint(path, weights_only=False)  # the full state: it resumes
            self.last_model_path, self.stop_saved = path, True
            for lg in trainer.loggers:  # wandb (log_model="all") uploads it like any other checkpoint
                lg.after_save_checkpoint(weakref.proxy(self))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            if trainer.should_stop or (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps):
                self._save_at_stop(trainer)

        def on_train_epoch_end(self, trainer, pl_module):
            super().on_train_epoch_end(trainer, pl_module)
            if trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs:
                self._save_at_stop(trainer)

        def on_train_end(self, trainer, pl_module):
            if not self.stop_saved:
                super().on_train_end(trainer, pl_module)

    # one run per folder: a resumed run overwrites its files (Lightning's version counter wrote last-v1.ckpt
    # beside a stale last.ckpt when the resumed run's checkpoint settings differed from the first run's)
    return StopCheckpoint(save_last=True, enable_version_counter=False, **kw)


def _rng_callback():
    from lightning.pytorch.callbacks import Callback

    class RNGState(Callback):
        """Saves the random generators' states in every checkpoint and restores them on resume, so a run
        resumed at an epoch boundary draws the same noise and data order as one never stopped. In DDP every
        rank restores rank 0's state and then forks it by its rank (ranks must not share noise)."""

        def state_dict(self):
            st = {"torch": torch.get_rng_state(), "python": random.getstate()}
            kind, keys, pos, has_gauss, gauss = np.random.get_state()
            st["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
            if torch.cuda.is_available():
                st["cuda"] = torch.cuda.get_rng_state_all()
            return st

        def load_state_dict(self, st):
            torch.set_rng_state(st["torch"])
            random.setstate(st["python"])
            kind, keys, pos, has_gauss, gauss = st["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(st["cuda"])
            if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
                fork = int(torch.randint(0, 2**62, ())) + torch.distributed.get_rank()
                torch.manual_seed(fork)
                random.seed(fork)
                np.random.seed(fork % 2**32)

    return RNGState()


def _step_rate(script: str, every_seconds: float = 60.0):
    """Prints, on rank 0 and at most once every `every_seconds`, the optimizer step, steps per second and the ETA
    of the step budget (max_steps) or the time budget (max_time), whichever ends first: the same command then
    says on any machine how long it will take."""
    import time

    from lightning.pytorch.callbacks import Callback

    def clock(seconds: float) -> str:
        s = int(seconds)
        return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

    class StepRate(Callback):
        def on_train_start(self, trainer, pl_module):
            self.t0 = self.last = time.time()
            self.step0 = trainer.global_step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now, step = time.time(), trainer.global_step
            if now - self.last < every_seconds or step == self.step0 or not trainer.is_global_zero:
                return
            self.last, rate = now, (step - self.step0) / (now - self.t0)
            left = []
            if trainer.max_steps and trainer.max_steps > 0:
                left.append((trainer.max_steps - step) / rate)
            timer = next((c for c in trainer.callbacks if type(c).__name__ == "Timer"), None)
            if timer is not None and timer.time_remaining("train") is not None:
                left.append(timer.time_remaining("train"))
            of = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
            eta = f", ETA {clock(min(left))}" if left else ""
            print(f"[{script}] step {step}{of}, {rate:.2f} steps/s{eta}", flush=True)

    return StepRate()


def _periodic_samples(every: int):
    from lightning.pytorch.callbacks import Callback

    class PeriodicSamples(Callback):
        """Calls the module's sample_and_save(tag) every `every` optimizer steps (not batches: gradient
        accumulation runs several batches per step), on rank 0, and once more when training ends."""

        def on_train_start(self, trainer, pl_module):
            self.seen = trainer.global_step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == self.seen:  # no optimizer step in this batch
                return
            self.seen = trainer.global_step
            if every and trainer.global_step % every == 0 and trainer.is_global_zero:
                pl_module.sample_and_save(f"step{trainer.global_step:07d}")

        def on_train_end(self, trainer, pl_module):
            if trainer.is_global_zero:
                pl_module.sample_and_save(f"final_step{trainer.global_step:07d}")

    return PeriodicSamples()


def make_trainer(args, out: Path, callbacks=(), clip_grad: float = 0.0, clip_start: int = 0, **kw):
    """A Lightning Trainer with this project's defaults: DDP when devices > 1, bf16 where it is native, atomic
    checkpoints, random-generator states saved in checkpoints (exact resume at epoch boundaries), grad-norm
    logging and clipping to clip_grad (0: off) from optimizer step clip_start on, metrics.csv (+ wandb)."""
    import lightning as L

    devices = parse_devices(str(args.devices))
    multi = (isinstance(devices, int) and devices > 1) or (isinstance(devices, list) and len(devices) > 1) or args.num_nodes > 1
    kw.setdefault("enable_model_summary", False)  # each script prints its own one-line summary
    return L.Trainer(
        accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes,
        strategy="ddp" if multi else "auto", precision=args.precision or default_precision(),
        logger=make_loggers(args, out), callbacks=[*callbacks, _grad_clip_callback(clip_grad, clip_start), _rng_callback()],
        plugins=[AtomicCheckpointIO()], default_root_dir=str(out), **kw)


def fit(a, module, train, val=None, *, out: Path, script: str, checkpoints: dict, collate_fn=None, watch: bool = False,
        **trainer_kw):
    """Train `module` on the dataset `train` (validating on `val` if given) with the flags of minisora/cli.py
    (a.epochs, a.max_steps, a.max_time, a.batch_size, a.accumulate_grad_batches, a.clip_grad, a.start_clip_iter,
    a.log_every, a.resume_from, a.compile, hardware). checkpoints: ModelCheckpoint arguments of the kept
    checkpoints (last.ckpt always; a.ckpt_every > 0 also keeps stepNNNNNNN.ckpt every that many steps when these
    arguments do not already say when to save); watch: wandb.watch the model's gradients (with --track); trainer_kw: extra
    Trainer arguments. Returns the Trainer."""
    from torch.utils.data import DataLoader

    from lightning.pytorch.callbacks import LearningRateMonitor

    callbacks = [checkpoint_callback(dirpath=str(out / "checkpoints"), auto_insert_metric_name=False, **checkpoints),
                 LearningRateMonitor("step"), _step_rate(script)]
    if getattr(a, "ckpt_every", 0) and "every_n_train_steps" not in checkpoints:  # e.g. the token models' best + periodic
        from lightning.pytorch.callbacks import ModelCheckpoint
        callbacks.append(ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="step{step:07d}", save_top_k=-1,
                                         every_n_train_steps=a.ckpt_every, auto_insert_metric_name=False,
                                         enable_version_counter=False))
    if hasattr(module, "sample_and_save"):  # generators: samples every a.sample_every steps and at the end
        callbacks.append(_periodic_samples(a.sample_every))
    if val is None:
        trainer_kw["limit_val_batches"] = 0
    trainer_kw = {k: v for k, v in trainer_kw.items() if v != 1.0 or not k.startswith("limit_")}  # 1.0: the default
    trainer = make_trainer(a, out, callbacks=callbacks, max_epochs=a.epochs, max_steps=a.max_steps, max_time=a.max_time,
                           accumulate_grad_batches=a.accumulate_grad_batches, log_every_n_steps=a.log_every,
                           clip_grad=a.clip_grad, clip_start=a.start_clip_iter, num_sanity_val_steps=0, **trainer_kw)
    if watch and a.track:
        trainer.loggers[-1].watch(module.model, log="gradients")
    if a.compile:
        module.model.compile()  # in place: checkpoint keys stay model.* (torch.compile would add _orig_mod.)
    kw = dict(batch_size=a.batch_size, num_workers=a.num_workers, pin_memory=torch.cuda.is_available(),
              persistent_workers=a.num_workers > 0, collate_fn=collate_fn)
    train_loader = DataLoader(train, shuffle=True, drop_last=len(train) >= a.batch_size, **kw)
    trainer.fit(module, train_loader, DataLoader(val, **kw) if val is not None else None, ckpt_path=a.resume_from,
                weights_only=True)  # MiniSora checkpoints hold tensors and plain values only
    if trainer.is_global_zero:
        m = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        print(f"[{script}] done at step {trainer.global_step}{f'. val: {m}' if m else ''}\n"
              f"[{script}] checkpoint: {out / 'checkpoints' / 'last.ckpt'}\n"
              f"[{script}] samples: {out / 'samples'}  metrics: {out / 'metrics.csv'}")
        if hasattr(module, "sample_and_save"):
            print(f"[{script}] sample more: python sample.py --checkpoint {out / 'checkpoints' / 'last.ckpt'} --num_videos 8")
    return trainer


def log_video(trainer, key: str, path: Path, step: int, fps: float = 4) -> None:
    """Send a saved mp4 to wandb when a WandbLogger is attached."""
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger":
            import wandb

            lg.experiment.log({key: wandb.Video(str(path), fps=fps, format="mp4"), "trainer/global_step": step})
