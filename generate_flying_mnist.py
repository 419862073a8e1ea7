"""Generate the Flying MNIST video dataset (or download the published 11k/110k tarballs).

Writes data/<name>/{train,val}/NNNNN.mp4 (H.264, RGB), data/<name>/{train,val}/metadata.jsonl
(one line per video: digit labels, colours, sizes, per-frame top-left positions and velocities)
and data/<name>/info.json (the generator settings). Re-running with the same settings resumes:
videos already on disk are kept (their metadata is recomputed, which is cheap and deterministic).

Examples:
  python generate_flying_mnist.py                           # upstream distribution: 10k + 1k, 512², 100 frames
  python generate_flying_mnist.py --resolution 64 --num_frames 16 --max_digits 2 \
      --num_train 512 --num_val 64 --name flying_mnist_tiny   # CPU-small set
  python generate_flying_mnist.py --download 11k            # the published 11k videos
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from minisora.cli import Parser
from minisora.files import atomic_write
from minisora.flying_mnist import DOWNLOAD_URLS, FlyingMNIST, FlyingMNISTConfig, download_dataset, load_digits

_GEN: FlyingMNIST | None = None  # per-process generator (set by _init_worker)


def parse_args(argv=None):
    p = Parser(__doc__)
    g = p.add_argument_group("dataset")
    g.add_argument("--name", default="flying_mnist", help="writes data/<name>/ (default: flying_mnist)")
    g.add_argument("--data_dir", default="data", help="root data folder (default: data)")
    g.add_argument("--num_train", type=int, default=10000, help="train videos (upstream 11k set: 10000; 110k: 100000)")
    g.add_argument("--num_val", type=int, default=1000, help="val videos (11k: 1000; 110k: 10000)")
    g.add_argument("--seed", type=int, default=0, help="same seed -> same videos, whatever --workers")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="generator processes (default: all cores)")
    g.add_argument("--overwrite", action="store_true", help="regenerate even if data/<name> exists with other settings")
    g.add_argument("--download", choices=sorted(DOWNLOAD_URLS), help="download the published tarball instead of generating")
    g.add_argument("--mnist", default="bundled",
                   help="digit source: 'bundled' (10k real digits in the repo, offline), 'torchvision' (60k MNIST "
                        "train, downloaded), or a path to an .npz (images, labels) / IDX directory")
    v = p.add_argument_group("videos (defaults reproduce upstream; sizes/speeds are 512-px values scaled to --resolution)")
    v.add_argument("--resolution", type=int, default=512, help="square frame side in px (even)")
    v.add_argument("--num_frames", type=int, default=100)
    v.add_argument("--fps", type=float, default=10.0)
    v.add_argument("--min_digits", type=int, default=1)
    v.add_argument("--max_digits", type=int, default=8)
    v.add_argument("--digit_size_min", type=int, default=None, help="px (default 50 at 512², scaled)")
    v.add_argument("--digit_size_max", type=int, default=None, help="px, inclusive (default 119 at 512², scaled)")
    v.add_argument("--min_speed", type=float, default=None, help="px/frame (default 10 at 512², scaled)")
    v.add_argument("--max_speed", type=float, default=None, help="px/frame, inclusive (default 39 at 512², scaled)")
    v.add_argument("--digits", type=int, nargs="+", default=list(range(10)), help="digit classes to draw from")
    v.add_argument("--crf", type=int, default=18, help="H.264 quality (lower = better)")
    return p.parse_args(argv)


def _init_worker(cfg: FlyingMNISTConfig, mnist: str, data_dir: str):
    global _GEN
    images, labels = load_digits(mnist, data_dir)
    _GEN = FlyingMNIST(cfg, images, labels)


def _make_one(job: tuple[str, int, str]) -> dict:
    split, index, out_dir = job
    path = Path(out_dir) / f"{index:05d}.mp4"
    traj = _GEN.trajectory(split, index)
    if not path.exists():  # resume: keep finished videos (writes are atomic, so an existing file is whole)
        _GEN.write(traj, path)
    return _GEN.record(split, index, traj, path.name)


def generate(cfg: FlyingMNISTConfig, root: Path, splits: dict[str, int], workers: int = 1,
             mnist: str = "bundled", data_dir: str = "data", progress: bool = True) -> dict:
    """Generate every split into root/<split>/; returns {split: number of videos}."""
    jobs = [(s, i, str(root / s)) for s, n in splits.items() for i in range(n)]
    for s in splits:
        (root / s).mkdir(parents=True, exist_ok=True)
    records: dict[str, list] = {s: [] for s in splits}
    bar = tqdm(total=len(jobs), unit="video", desc=f"generating {root}", disable=not progress)
    if workers <= 1:
        _init_worker(cfg, mnist, data_dir)
        results = map(_make_one, jobs)
        pool = None
    else:
        pool = mp.get_context("fork" if sys.platform == "linux" else "spawn").Pool(
            workers, initializer=_init_worker, initargs=(cfg, mnist, data_dir))
        results = pool.imap_unordered(_make_one, jobs, chunksize=4)
    try:
        for rec in results:
            records[rec["split"]].append(rec)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    for s, recs in records.items():
        recs.sort(key=lambda r: r["index"])
        atomic_write(root / s / "metadata.jsonl", "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs))
    return {s: len(r) for s, r in records.items()}


def main(argv=None):
    a = parse_args(argv)
    if a.download:
        try:
            out = download_dataset(a.download, a.data_dir)
        except ConnectionError as e:
            sys.exit(f"error: {e}")
        print(f"extracted the {a.download} set into {out}/ :", ", ".join(sorted(p.name for p in out.iterdir())))
        return
    cfg = FlyingMNISTConfig(
        resolution=a.resolution, num_frames=a.num_frames, fps=a.fps, min_digits=a.min_digits, max_digits=a.max_digits,
        digit_size_min=a.digit_size_min, digit_size_max=a.digit_size_max, min_speed=a.min_speed, max_speed=a.max_speed,
        digits=tuple(a.digits), seed=a.seed, crf=a.crf,
    )
    try:
        cfg = cfg.resolved()
    except ValueError as e:
        sys.exit(f"error: {e}")
    root = Path(a.data_dir) / a.name
    info_path = root / "info.json"
    info = {"generator": asdict(cfg), "mnist": a.mnist, "num_train": a.num_train, "num_val": a.num_val}
    if info_path.exists() and not a.overwrite:
        old = json.loads(info_path.read_text())
        if old.get("generator") != json.loads(json.dumps(info["generator"])) or old.get("mnist") != a.mnist:
            sys.exit(f"error: {root} was generated with other settings ({info_path}); "
                     f"pass --overwrite to regenerate, or choose another --name")
    if a.overwrite and root.exists():
        for s in ("train", "val"):
            for f in (root / s).glob("*.mp4") if (root / s).exists() else []:
                f.unlink()
    root.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps(info, indent=2))
    t0 = time.time()
    counts = generate(cfg, root, {"train": a.num_train, "val": a.num_val}, workers=a.workers, mnist=a.mnist,
                      data_dir=a.data_dir)
    dt = time.time() - t0
    frames = sum(counts.values()) * cfg.num_frames
    print(f"wrote {counts} videos ({cfg.resolution}², {cfg.num_frames} frames) to {root}/ "
          f"in {dt:.1f}s ({frames / max(dt, 1e-9):.0f} frames/s); metadata: {root}/<split>/metadata.jsonl")


if __name__ == "__main__":
    main()
