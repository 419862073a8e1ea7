"""Flying MNIST: coloured MNIST digits flying and bouncing in a black frame.

Default distribution follows the upstream generator (512x512, 100 frames at 10 fps, 1-8 digits
of 50-119 px, speeds 10-39 px/frame, 21-level random colours, bouncing), with its quirks fixed:
frames are stored RGB (upstream swapped R and B), each digit bounces off the walls at its own size
(upstream used the largest size for every digit), and masks are binary (upstream let a grey level
of exactly 150 through as partial alpha). Sizes and speeds given in 512-px units are scaled to the
chosen resolution when not set explicitly.

Every video is drawn from its own RNG seeded by (seed, split, index), so the output does not
depend on the number of worker processes or on the order of generation.
"""
from __future__ import annotations

import gzip
import os
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minisora.files import atomic_path
from minisora.video_io import write_video_yuv420

BUNDLED_DIGITS = Path(__file__).with_name("assets") / "mnist_digits_10k.npz"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
REFERENCE_RESOLUTION = 512
# 21 colour levels per channel: linspace(0, 1, 25)[4:] -> 4/24 ... 1.0
COLOR_LEVELS = np.linspace(0.0, 1.0, 25)[4:]
DOWNLOAD_URLS = {
    "11k": "https://storage.googleapis.com/research-datasets-public/minisora/flying_mnist_11k.tar.gz",
    "110k": "https://storage.googleapis.com/research-datasets-public/minisora/flying_mnist_110k.tar.gz",
}


@dataclass
class FlyingMNISTConfig:
    resolution: int = 512
    num_frames: int = 100
    fps: float = 10.0
    min_digits: int = 1
    max_digits: int = 8
    # Sizes/speeds: None -> upstream's 512-px values (50..119 px, 10..39 px/frame) scaled to resolution.
    digit_size_min: int | None = None
    digit_size_max: int | None = None  # inclusive
    min_speed: float | None = None
    max_speed: float | None = None  # inclusive
    digits: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
    mask_threshold: int = 150  # grey level (0-255) at or above which a resized digit pixel is ink
    seed: int = 0
    crf: int = 18  # H.264 quality of the written mp4 (lower = better, bigger files)

    def resolved(self) -> "FlyingMNISTConfig":
        """Fill the None sizes/speeds from the 512-px reference scaled to `resolution`, and check."""
        s = self.resolution / REFERENCE_RESOLUTION
        c = FlyingMNISTConfig(**{**asdict(self), "digits": tuple(self.digits)})
        if c.digit_size_min is None:
            c.digit_size_min = max(4, round(50 * s))
        if c.digit_size_max is None:
            c.digit_size_max = max(c.digit_size_min, round(119 * s))
        if c.min_speed is None:
            c.min_speed = round(10 * s, 3)
        if c.max_speed is None:
            c.max_speed = max(c.min_speed, round(39 * s, 3))
        if c.resolution % 2:
            raise ValueError(f"--resolution must be even (H.264 yuv420p), got {c.resolution}")
        if not 1 <= c.min_digits <= c.max_digits:
            raise ValueError(f"need 1 <= --min_digits <= --max_digits, got {c.min_digits}, {c.max_digits}")
        if not 1 <= c.digit_size_min <= c.digit_size_max <= c.resolution:
            raise ValueError(
                f"digit sizes {c.digit_size_min}..{c.digit_size_max} px do not fit a {c.resolution}px frame"
            )
        if not 0 <= c.min_speed <= c.max_speed:
            raise ValueError(f"need 0 <= --min_speed <= --max_speed, got {c.min_speed}, {c.max_speed}")
        if c.num_frames < 1:
            raise ValueError("--num_frames must be >= 1")
        return c


# ----------------------------------------------------------------------------------------- digits
def load_digits(source: str = "bundled", data_dir: str | os.PathLike = "data") -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits as (images uint8 (N, 28, 28), labels uint8 (N,)).

    source: "bundled" (10k real digits shipped with the repo, works offline), "torchvision"
    (the 60k MNIST train set, downloaded to <data_dir>/mnist), or a path to an .npz with
    `images`/`labels` or to a directory with the IDX files (train-images-idx3-ubyte[.gz], ...).
    """
    if source == "bundled":
        return _load_npz(BUNDLED_DIGITS)
    if source == "torchvision":
        root = Path(data_dir) / "mnist"
        raw = root / "MNIST" / "raw"
        if not (raw / "train-images-idx3-ubyte").exists():
            from minisora.resolve import require_online
            require_online("https://ossci-datasets.s3.amazonaws.com/mnist/", what="full MNIST (torchvision)",
                           fallback="use the bundled 10k digits (the default, --mnist bundled)")
        from torchvision.datasets import MNIST

        ds = MNIST(str(root), train=True, download=True)
        return ds.data.numpy().astype(np.uint8), ds.targets.numpy().astype(np.uint8)
    p = Path(source)
    if p.suffix == ".npz":
        return _load_npz(p)
    if p.is_dir():
        return _read_idx(_find(p, "train-images-idx3-ubyte")), _read_idx(_find(p, "train-labels-idx1-ubyte"))
    raise FileNotFoundError(f"--mnist {source!r}: expected 'bundled', 'torchvision', an .npz or an IDX directory")


def _load_npz(path) -> tuple[np.ndarray, np.ndarray]:
    if not Path(path).exists():
        raise FileNotFoundError(f"MNIST digits file not found: {path}")
    with np.load(path) as z:
        return z["images"].astype(np.uint8), z["labels"].astype(np.uint8)


def _find(d: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (d / name).exists():
            return d / name
    raise FileNotFoundError(f"{stem}[.gz] not found in {d}")


def _read_idx(path: Path) -> np.ndarray:
    data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def download_dataset(size: str, data_dir: str | os.PathLike = "data") -> Path:
    """Download and extract the published Flying MNIST tarball (11k or 110k videos) into data_dir."""
    import tarfile

    from tqdm import tqdm

    url = DOWNLOAD_URLS[size]
    from minisora.resolve import require_online
    require_online(url, what=f"the Flying MNIST {size} tarball", fallback=(
        "generate the data locally, e.g. `python generate_flying_mnist.py --name flying_mnist "
        "--num_train 10000 --num_val 1000` (upstream distribution), or a CPU-small set with "
        "`python generate_flying_mnist.py --resolution 64 --num_frames 16 --max_digits 2 --num_train 512 --num_val 64`"))
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tar_path = data_dir / Path(urllib.parse.urlparse(url).path).name
    with atomic_path(tar_path) as tmp, urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f, tqdm(
        total=int(r.headers.get("Content-Length", 0)) or None, unit="B", unit_scale=True, desc=tar_path.name
    ) as bar:
        while chunk := r.read(1 << 20):
            f.write(chunk)
            bar.update(len(chunk))
    with tarfile.open(tar_path) as t:
        t.extractall(data_dir, filter="data")
    tar_path.unlink()
    return data_dir


# ------------------------------------------------------------------------------------- rendering
class FlyingMNIST:
    """Draws videos: `trajectory(split, i)` (digits and motion), `write(traj, path)` (mp4), `record(...)` (metadata)."""

    def __init__(self, config: FlyingMNISTConfig, images: np.ndarray, labels: np.ndarray):
        self.cfg = config.resolved()
        self.images, self.labels = images, labels
        self.by_label = {d: np.flatnonzero(labels == d) for d in self.cfg.digits}
        missing = [d for d, idx in self.by_label.items() if len(idx) == 0]
        if missing:
            raise ValueError(f"the digit source has no images of class(es) {missing}")

    def rng(self, split: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, SPLIT_CODES[split], index])

    def trajectory(self, split: str, index: int) -> dict:
        """Everything about one video except its pixels: digits, colours, sizes, per-frame motion."""
        c, r = self.cfg, self.rng(split, index)
        n = int(r.integers(c.min_digits, c.max_digits + 1))
        sizes = r.integers(c.digit_size_min, c.digit_size_max + 1, n)
        labels = r.choice(np.asarray(c.digits), n)
        mnist_idx = [int(r.choice(self.by_label[int(d)])) for d in labels]
        colors = r.choice(COLOR_LEVELS, (n, 3))
        limits = (c.resolution - sizes).astype(np.float64)  # per-digit wall: top-left stays in [0, R - size]
        pos = r.random((n, 2)) * limits[:, None]
        theta = np.pi * (r.random(n) * 2 - 1)
        speed = r.uniform(c.min_speed, c.max_speed, n)
        vel = np.stack([speed * np.cos(theta), speed * np.sin(theta)], 1)
        positions, velocities = np.zeros((c.num_frames, n, 2), np.int64), np.zeros((c.num_frames, n, 2))
        for t in range(c.num_frames):
            positions[t], velocities[t] = np.floor(pos), vel
            pos, vel = _bounce(pos + vel, vel, limits[:, None])
        return dict(labels=labels.tolist(), mnist_index=mnist_idx, sizes=sizes.tolist(),
                    colors=np.round(colors * 255).astype(int).tolist(),
                    positions=positions, velocities=velocities)

    def sprites(self, traj: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per digit: (binary mask (s, s), YUV values (s, s, 3) uint8) of the coloured, resized digit."""
        from PIL import Image

        out = []
        for i, s, col in zip(traj["mnist_index"], traj["sizes"], traj["colors"]):
            grey = np.asarray(Image.fromarray(self.images[i]).resize((s, s), Image.LANCZOS))
            rgb = grey[..., None].astype(np.float32) * (np.asarray(col, np.float32) / 255.0)  # anti-aliased ink
            out.append((grey >= self.cfg.mask_threshold, rgb_to_yuv(rgb)))
        return out

    def frames_yuv420(self, traj: dict):
        """Yield frames as yuv420p arrays (H * 3 // 2, W). Digits are pasted in order (later ones occlude
        earlier ones) into full-resolution Y/U/V planes; chroma is then 2x2-averaged, only inside the
        rectangles that changed since the last frame, so a frame costs O(digit area), not O(H * W)."""
        R = self.cfg.resolution
        planes = np.empty((3, R, R), np.uint8)
        planes[0], planes[1:] = YUV_BLACK[0], YUV_BLACK[1]
        buf = np.empty((R * 3 // 2, R), np.uint8)
        buf[:R] = YUV_BLACK[0]
        buf[R:] = YUV_BLACK[1]
        y_out = buf[:R]
        uv_out = (buf[R:R + R // 4].reshape(R // 2, R // 2), buf[R + R // 4:].reshape(R // 2, R // 2))
        sprites = [(m, np.ascontiguousarray(yuv.transpose(2, 0, 1))) for m, yuv in self.sprites(traj)]
        prev: list[tuple[int, int, int, int]] = []
        for t in range(self.cfg.num_frames):
            for y0, y1, x0, x1 in prev:
                planes[:, y0:y1, x0:x1] = YUV_BLACK[:, None, None]
            rects = []
            for (mask, yuv), (x, y) in zip(sprites, traj["positions"][t]):
                s = mask.shape[0]
                np.copyto(planes[:, y:y + s, x:x + s], yuv, where=mask)
                rects.append((y, y + s, x, x + s))
            for y0, y1, x0, x1 in prev + rects:
                y0, x0, y1, x1 = y0 & ~1, x0 & ~1, min(R, (y1 + 1) & ~1), min(R, (x1 + 1) & ~1)
                y_out[y0:y1, x0:x1] = planes[0, y0:y1, x0:x1]
                for c in (0, 1):
                    q = planes[1 + c, y0:y1, x0:x1].astype(np.uint16)
                    q = q[0::2, 0::2] + q[1::2, 0::2] + q[0::2, 1::2] + q[1::2, 1::2]
                    uv_out[c][y0 // 2:y1 // 2, x0 // 2:x1 // 2] = (q + 2) >> 2
            prev = rects
            yield buf

    def write(self, traj: dict, path) -> str:
        c = self.cfg
        return write_video_yuv420(path, self.frames_yuv420(traj), c.resolution, c.resolution, fps=c.fps, crf=c.crf)

    def record(self, split: str, index: int, traj: dict, file: str) -> dict:
        c = self.cfg
        return dict(file=file, split=split, index=index, num_frames=c.num_frames, resolution=c.resolution,
                    fps=c.fps, labels=traj["labels"], mnist_index=traj["mnist_index"], sizes=traj["sizes"],
                    colors=traj["colors"],
                    positions=traj["positions"].transpose(1, 0, 2).tolist(),  # [digit][frame] = [x, y]
                    velocities=np.round(traj["velocities"], 3).transpose(1, 0, 2).tolist())


# BT.601 limited-range RGB -> YUV (what H.264 players assume for untagged SD/small video).
_RGB2YUV = np.array([[0.256788, 0.504129, 0.097906],
                     [-0.148223, -0.290993, 0.439216],
                     [0.439216, -0.367788, -0.071427]], np.float32)
YUV_BLACK = np.array([16, 128, 128], np.uint8)


def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """float/uint8 RGB (..., 3) in 0..255 -> uint8 YUV (..., 3), BT.601 limited range."""
    yuv = np.asarray(rgb, np.float32) @ _RGB2YUV.T + YUV_BLACK.astype(np.float32)
    return np.clip(np.round(yuv), 0, 255).astype(np.uint8)


def _bounce(pos: np.ndarray, vel: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reflect positions that crossed a wall back inside [0, limit] and flip that velocity component."""
    vel = vel.copy()
    low, high = pos < 0, pos > limit
    pos = np.where(low, -pos, np.where(high, 2 * limit - pos, pos))
    vel[low | high] *= -1
    return np.clip(pos, 0, limit), vel
