"""What every training script shares: common flags, the run folder, loggers and the Lightning Trainer.

Run folder: runs/<script>/<run name>/ with config.json (all args), metrics.csv (Lightning CSVLogger),
samples/ (mp4 + gif) and checkpoints/ (last.ckpt + periodic). wandb (--track) gets the same metrics and
videos under one run; it is never required (WANDB_MODE=offline works).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from minisora.checkpoint import AtomicCheckpointIO
from minisora.video_io import to_uint8_frames, write_gif, write_video


def resume_checkpoint(ref: str | None) -> str | None:
    """--resume_from (a local checkpoint or folder, or a wandb artifact) as a local path; exits with a clear
    message when it cannot be used."""
    if not ref:
        return None
    from minisora.resolve import resolve_checkpoint_path
    try:
        return str(resolve_checkpoint_path(ref))
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        raise SystemExit(f"error: --resume_from {ref}: {e}") from None


def add_common_args(p: argparse.ArgumentParser, project: str) -> None:
    g = p.add_argument_group("run / hardware (shared by every training script)")
    g.add_argument("--dataset", default="flying_mnist", help="reads data/<dataset>/{train,val} (or a folder path)")
    g.add_argument("--data_dir", default="data")
    g.add_argument("--on_bad_video", default="skip", choices=["skip", "raise"],
                   help="a corrupt, empty or too-short video: warn (naming it) and use the next one, or stop")
    g.add_argument("--output_dir", default="runs", help="runs/<script>/<run_name>/ holds config, metrics, samples, checkpoints")
    g.add_argument("--run_name", default=None, help="default: a timestamp")
    g.add_argument("--devices", "--gpus", dest="devices", default="auto",
                   help="'auto', a count, or a list like 0,1 (--gpus is upstream's alias); >1 uses DDP")
    g.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    g.add_argument("--num_nodes", type=int, default=1)
    g.add_argument("--precision", default=None,
                   help="Lightning precision (32-true | bf16-mixed | 16-mixed); default bf16-mixed where the GPU or CPU "
                        "has native bf16, else 32-true")
    g.add_argument("--num_workers", type=int, default=2, help="DataLoader workers per process")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--resume_from", default=None, help="checkpoint to resume: local path or wandb artifact name")
    g.add_argument("--track", "--wandb_log", dest="track", action="store_true", help="log to wandb (--wandb_log is an alias)")
    g.add_argument("--project", default=project, help=f"wandb project (default {project})")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")


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


def run_dir(args, script: str) -> Path:
    name = args.run_name or time.strftime("%Y%m%d-%H%M%S")
    d = Path(args.output_dir) / script / name
    (d / "samples").mkdir(parents=True, exist_ok=True)
    (d / "checkpoints").mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        (d / "config.json").write_text(json.dumps(vars(args), indent=2, default=str))
    return d


def make_loggers(args, out: Path):
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(str(out), name="", version="")]
    if args.track:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=args.project, name=out.name, save_dir=str(out), log_model="all",
                                   config=vars(args)))
    return loggers


def checkpoint_callback(**kw):
    """Lightning's ModelCheckpoint (kw as for it, save_last=True) that also writes last.ckpt at the step where
    training stops (--max_steps, --max_time, --epochs or should_stop), from inside the loop, so the file
    resumes like any other Lightning checkpoint (one saved after fit() returns restarts its epoch accounting
    wrongly)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class FinalCheckpoint(ModelCheckpoint):
        def _save_final(self, trainer):
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            if trainer.should_stop or (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps):
                self._save_final(trainer)

        def on_train_epoch_end(self, trainer, pl_module):
            super().on_train_epoch_end(trainer, pl_module)
            if trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs:
                self._save_final(trainer)

    return FinalCheckpoint(save_last=True, **kw)


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


def make_trainer(args, out: Path, callbacks=(), clip_grad: float = 0.0, clip_start: int = 0, **kw):
    """A Lightning Trainer with this project's defaults: DDP when devices > 1, bf16 on GPU, atomic checkpoints,
    random-generator states saved in checkpoints (exact resume at epoch boundaries), grad-norm logging and
    clipping to clip_grad (0: off) from optimizer step clip_start on."""
    import lightning as L

    devices = parse_devices(str(args.devices))
    multi = (isinstance(devices, int) and devices > 1) or (isinstance(devices, list) and len(devices) > 1) or args.num_nodes > 1
    return L.Trainer(
        accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes,
        strategy="ddp" if multi else "auto", precision=args.precision or default_precision(),
        logger=make_loggers(args, out), callbacks=[*callbacks, _grad_clip_callback(clip_grad, clip_start), _rng_callback()], plugins=[AtomicCheckpointIO()],
        default_root_dir=str(out), **kw)


def save_video_grid(videos: list[torch.Tensor], path: Path, fps: float = 4, gif: bool = True) -> Path:
    """Save (C, T, H, W) videos in [-1, 1] side by side (along width) as mp4 (+ gif). Returns the mp4 path."""
    frames = np.concatenate([to_uint8_frames(v) for v in videos], axis=2)
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:  # yuv420p needs even sizes
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    write_video(path, frames, fps=fps)
    if gif:
        write_gif(path.with_suffix(".gif"), frames, fps=fps)
    return path


def log_video(trainer, key: str, path: Path, step: int, fps: float = 4) -> None:
    """Send a saved mp4 to wandb when a WandbLogger is attached."""
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger":
            import wandb

            lg.experiment.log({key: wandb.Video(str(path), fps=fps, format="mp4"), "trainer/global_step": step})
