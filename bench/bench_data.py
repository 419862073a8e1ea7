"""Data-stage benchmark: generator frames/s (render + H.264 encode + write), decode frames/s
(decord vs PyAV), and VideoDataset clips/s through a DataLoader vs raw decoding.

    python bench/bench_data.py                 # full table (~1-2 min on 2 cores)
    python bench/bench_data.py --quick         # smaller counts
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from generate_flying_mnist import generate  # noqa: E402
from minisora.cli import Parser
from minisora.data import VideoDataset, collate_videos  # noqa: E402
from minisora.flying_mnist import FlyingMNISTConfig  # noqa: E402
from minisora.video_io import available_backends, read_video  # noqa: E402


def main():
    p = Parser(__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="minisora_bench_"))
    n = {64: 200, 256: 40, 512: 100} if not a.quick else {64: 50, 256: 10, 512: 10}
    try:
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, generator workers={a.workers}\n")
        print("| generator (H.264 via PyAV, RGB) | videos | frames/s |\n|---|---|---|")
        for res, frames in ((64, 16), (256, 100), (512, 100)):
            cfg = FlyingMNISTConfig(resolution=res, num_frames=frames)
            t = time.perf_counter()
            generate(cfg, tmp / f"g{res}", {"train": n[res]}, workers=a.workers, progress=False)
            dt = time.perf_counter() - t
            print(f"| {res}², {frames} frames, 1-8 digits | {n[res]} | {n[res] * frames / dt:.0f} |")
        print("\nupstream generator at 512², 100 frames (1 process, mp4v via OpenCV): 482 frames/s\n")

        files = sorted((tmp / "g256" / "train").glob("*.mp4"))
        print("| decode 256², 100-frame videos | frames/s |\n|---|---|")
        for backend in available_backends():
            t = time.perf_counter()
            tot = sum(len(read_video(f, backend=backend)) for f in files)
            print(f"| {backend} | {tot / (time.perf_counter() - t):.0f} |")

        print("\n| 32-frame 256² clips (5 alternating passes after a warm-up; medians) | clips/s | vs raw decode |"
              "\n|---|---|---|")

        def timed(run):
            t = time.perf_counter()
            return run() / (time.perf_counter() - t)

        def raw_pass():
            return sum(len(read_video(f, 0, 32)) > 0 for f in files)

        def compare(run, passes=5):
            """Alternate raw and dataset passes so that drift in the machine's speed cancels in the ratio."""
            raw_pass(), run()  # warm-up: file cache, decoder libraries, worker start-up
            pairs = [(timed(raw_pass), timed(run)) for _ in range(passes)]
            return statistics.median(r for _, r in pairs), statistics.median(r / raw for raw, r in pairs)

        raw = statistics.median(timed(raw_pass) for _ in range(5))
        print(f"| raw read_video, 1 process | {raw:.1f} | 100% |")
        for as_uint8 in (False, True):
            ds = VideoDataset(str(tmp / "g256"), "train", resolution=256, sequence_length=32, as_uint8=as_uint8)
            for workers in (0, a.workers):
                for name, collate in (("default_collate", None), ("collate_videos", collate_videos)):
                    dl = DataLoader(ds, batch_size=4, num_workers=workers, persistent_workers=workers > 0,
                                    collate_fn=collate)
                    rate, ratio = compare(lambda: sum(len(b["video"]) for b in dl))
                    kind = "uint8" if as_uint8 else "float [-1,1]"
                    print(f"| VideoDataset ({kind}) + DataLoader(num_workers={workers}, {name}) | {rate:.1f} "
                          f"| {100 * ratio:.0f}% |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
