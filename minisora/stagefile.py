"""Stage files: a .npy array (one row per video clip) plus a JSON sidecar with the same stem.

Written through a memory map, row by row, into <name>.partial.npy; progress is recorded in
<name>.partial.json so an interrupted run resumes where it stopped; when complete the array is
renamed into place and the sidecar written (both atomic). Readers memory-map the array.

Sidecar keys: format ("minisora.latents" | "minisora.tokens"), format_version, kind, shape, dtype,
source (dataset dir, split, files, clip length, resolution, stride), vae (reference, name, kind, config,
strides, channels), scaling_factor, channel_mean/channel_std (latents), n_codes (tokens), args, created.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from minisora.files import atomic_write

FORMAT_VERSION = 1


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=1))


def token_dtype(n_codes: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds codes 0..n_codes-1."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_codes - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


class StageWriter:
    """Resumable writer. `rows_done` rows are already on disk; call `write(rows)` with the next rows
    in order, then `finish(extra_meta)`. A partial file made with different settings is restarted."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype, meta: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.stem + ".partial.npy")
        self.progress = self.path.with_name(self.path.stem + ".partial.json")
        self.meta = {"format": f"minisora.{meta['kind']}", "format_version": FORMAT_VERSION,
                     "shape": list(shape), "dtype": np.dtype(dtype).name, **meta}
        key = json.dumps({k: self.meta[k] for k in ("shape", "dtype", "source", "vae")}, sort_keys=True, default=str)
        self.rows_done = 0
        if self.partial.exists() and self.progress.exists():
            prog = json.loads(self.progress.read_text())
            if prog.get("key") == key:
                self.array = np.load(self.partial, mmap_mode="r+")
                self.rows_done = int(prog["rows_done"])
        if not self.rows_done:
            self.array = np.lib.format.open_memmap(self.partial, mode="w+", dtype=dtype, shape=tuple(shape))
        self._key = key

    def write(self, rows: np.ndarray) -> None:
        n = len(rows)
        self.array[self.rows_done:self.rows_done + n] = rows
        self.rows_done += n
        self.array.flush()  # data first, then the progress that claims it
        _write_json(self.progress, {"key": self._key, "rows_done": self.rows_done})

    def finish(self, extra: dict | None = None) -> Path:
        if self.rows_done != len(self.array):
            raise RuntimeError(f"{self.path}: wrote {self.rows_done} of {len(self.array)} rows")
        meta = {**self.meta, **(extra or {}), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if meta["kind"] == "latents":
            mean, std = channel_stats(self.array)
            meta.update(channel_mean=mean, channel_std=std)
        self.array.flush()
        del self.array
        os.replace(self.partial, self.path)
        _write_json(sidecar_path(self.path), meta)
        self.progress.unlink(missing_ok=True)
        return self.path


def channel_stats(arr: np.ndarray, chunk: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of (N, C, ...) latents, in float64, streaming over rows."""
    c = arr.shape[1]
    s, ss, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(arr), chunk):
        x = np.asarray(arr[i:i + chunk], np.float64).swapaxes(0, 1).reshape(c, -1)
        s += x.sum(1)
        ss += (x * x).sum(1)
        n += x.shape[1]
    mean = s / max(n, 1)
    std = np.sqrt(np.maximum(ss / max(n, 1) - mean**2, 0))
    return mean.tolist(), std.tolist()


def latent_stats(meta: dict, array, codebook: np.ndarray | None = None, rows: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of a stage file's latents: from its sidecar, else estimated from the first rows
    (tokens: of their code vectors, `codebook` (K, C)). Stds are floored at 1e-6."""
    if "channel_mean" in meta and "channel_std" in meta:
        return meta["channel_mean"], [max(s, 1e-6) for s in meta["channel_std"]]
    x = np.asarray(array[:rows])
    if codebook is not None:
        x = np.moveaxis(codebook[x.astype(np.int64)], -1, 1)
    mean, std = channel_stats(x)
    return mean, [max(s, 1e-6) for s in std]


def load_stage(path: str | os.PathLike, expect_kind: str | None = None) -> tuple[np.ndarray, dict]:
    """Memory-map a stage file and return (array, sidecar). Without a sidecar (e.g. upstream's
    precomputed files) the kind and layout are inferred from the array, with a warning."""
    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.stem + ".partial.npy")
        hint = f" (an unfinished {partial.name} exists: re-run the command that makes it to resume)" if partial.exists() else ""
        raise FileNotFoundError(f"stage file not found: {path}{hint}")
    arr = np.load(path, mmap_mode="r")
    side = sidecar_path(path)
    if side.exists():
        meta = json.loads(side.read_text())
        if list(arr.shape) != meta["shape"] or arr.dtype.name != meta["dtype"]:
            raise ValueError(f"{path} holds {arr.dtype.name} {list(arr.shape)} but its sidecar {side} says "
                             f"{meta['dtype']} {meta['shape']}")
    else:
        kind = "tokens" if np.issubdtype(arr.dtype, np.integer) else "latents"
        if (kind, arr.ndim) not in (("tokens", 4), ("latents", 5)):
            raise ValueError(f"{path}: cannot infer the layout of a {arr.dtype.name} array of shape {arr.shape} "
                             f"(expected tokens (N, T, H, W) or latents (N, C, T, H, W))")
        warnings.warn(f"{path} has no sidecar {side.name}: inferred {kind} of shape {arr.shape}; VAE, strides and "
                      f"scaling must come from flags", stacklevel=2)
        meta = {"format": f"minisora.{kind}", "kind": kind, "shape": list(arr.shape), "dtype": arr.dtype.name,
                "inferred": True}
    if expect_kind and meta["kind"] != expect_kind:
        raise ValueError(f"{path} holds {meta['kind']}, expected {expect_kind}")
    return arr, meta


def check_vae_matches(meta: dict, vae, path: str | os.PathLike) -> None:
    """Fail with both descriptions when a stage file was not made by (a VAE shaped like) `vae`."""
    if meta["kind"] == "tokens":
        if not vae.quantize:
            raise ValueError(f"{path} holds VQ tokens but VAE {vae.reference} does not quantize (no codebook to "
                             f"turn them into vectors): pass the VQ-VAE that made the file")
        if meta.get("n_codes") is not None and meta["n_codes"] != vae.n_codes:
            raise ValueError(f"{path} holds codes of a {meta['n_codes']}-entry codebook "
                             f"(VAE {meta.get('vae', {}).get('reference')}) but VAE {vae.reference} has {vae.n_codes}")
    if meta.get("inferred"):
        shape = meta["shape"]
        chans = shape[1] if meta["kind"] == "latents" else None
        if chans is not None and chans != vae.latent_channels:
            raise ValueError(f"{path} has {chans} latent channels but VAE {vae.reference} has {vae.latent_channels}")
        return
    v = meta.get("vae", {})
    mine = (vae.latent_channels, vae.temporal_stride, vae.spatial_stride)
    theirs = (v.get("latent_channels"), v.get("temporal_stride"), v.get("spatial_stride"))
    if mine != theirs:
        raise ValueError(f"{path} was made by VAE {v.get('reference')} (channels, t-stride, s-stride = {theirs}) "
                         f"but the VAE given is {vae.reference} {mine}")
    if v.get("name") and v.get("name") != vae.name:
        warnings.warn(f"{path} was made by VAE {v.get('reference')!r}, decoding with {vae.reference!r}", stacklevel=2)
