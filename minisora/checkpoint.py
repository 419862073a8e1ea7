"""Checkpoints: plain dicts of tensors and JSON-like values, loadable with torch.load(weights_only=True),
written atomically (temp file + rename).

Every checkpoint carries a `minisora` entry: {"format_version", "kind" (vae / latte / stdit / gpt /
mamba), "config" (the model's dataclass as a dict), plus what later stages need}. Training checkpoints
are Lightning's (state_dict with the module's prefix, optimizer, loops) with that entry added, so one
file both resumes training and loads the model.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from minisora.files import atomic_path

FORMAT_VERSION = 1
UPSTREAM_HINT = ("Upstream's published checkpoints (zzsi_kungfu/videogpt/model-*, zzsi_kungfu/flying_mnist/*) hold "
                 "upstream's networks, which MiniSora does not reproduce layer for layer: train a VAE with "
                 "train_vqvae.py (or use a diffusers AutoencoderKL such as stabilityai/sd-vae-ft-mse) and pass "
                 "its runs/<script>/<run>/checkpoints/last.ckpt or the wandb artifact its --track run logged.")


def atomic_save(obj, path: str | os.PathLike) -> str:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return os.fspath(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a half-written file behind (a killed job keeps the last good one)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_save(checkpoint, path)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file: the path itself, or in a folder its last.ckpt / model.ckpt (else the last .ckpt/.pt)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("*.ckpt")) + sorted(path.rglob("*.pt"))
        last = [p for p in found if p.name in ("last.ckpt", "model.ckpt")]
        if not found:
            raise FileNotFoundError(f"no .ckpt/.pt checkpoint in directory {path}")
        path = (last or found)[-1]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """torch.load(weights_only=True) on CPU; clear errors for missing or non-MiniSora files. mmap=True maps
    the tensors instead of reading them (a cheap look at the metadata of a large file)."""
    path = find_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:  # weights_only refuses pickled Python objects (argparse Namespaces, ...)
        raise ValueError(f"{path} is not a MiniSora checkpoint: it holds pickled Python objects, which "
                         f"MiniSora never writes. {UPSTREAM_HINT} ({str(e).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or "minisora" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a MiniSora checkpoint (no 'minisora' entry; keys: {keys}). {UPSTREAM_HINT}")
    if ckpt["minisora"].get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {ckpt['minisora']['format_version']} > supported {FORMAT_VERSION}")
    ckpt["minisora"]["path"] = str(path)
    return ckpt


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step a training checkpoint was saved at (read through mmap: no tensor is loaded)."""
    return int(load_checkpoint(path, mmap=True).get("global_step", 0))


def module_state_dict(ckpt: dict, prefix: str = "model.", ema: bool = False) -> dict:
    """The model weights of a checkpoint: the EMA copy when asked and present, else state_dict minus `prefix`."""
    if ema and "ema_state_dict" in ckpt:
        return ckpt["ema_state_dict"]
    sd = ckpt["state_dict"]
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)} if any(
        k.startswith(prefix) for k in sd) else sd
