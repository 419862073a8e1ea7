"""The whole MiniSora pipeline at CPU-small scale, one stage after another.

    bash train.sh python demo.py            # writes runs/demo/ (and data/flying_mnist_demo/)

Each stage is skipped when its output already exists, so a re-run resumes where it stopped.
Stages: generate Flying MNIST (64², 16 frames, 1-2 digits).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def run(stage: str, cmd: list[str], done: Path) -> None:
    if done.exists():
        print(f"[demo] {stage}: already done ({done}), skipping")
        return
    print(f"[demo] {stage}: {' '.join(cmd)}", flush=True)
    t = time.time()
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True)
    print(f"[demo] {stage}: done in {time.time() - t:.0f}s", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="flying_mnist_demo", help="dataset name under data/")
    p.add_argument("--num_train", type=int, default=1024)
    p.add_argument("--num_val", type=int, default=64)
    a = p.parse_args(argv)
    data = ROOT / "data" / a.name
    run("data", ["generate_flying_mnist.py", "--name", a.name, "--resolution", "64", "--num_frames", "16",
                 "--max_digits", "2", "--digit_size_min", "20", "--digit_size_max", "28", "--min_speed", "1",
                 "--max_speed", "4", "--num_train", str(a.num_train), "--num_val", str(a.num_val)],
        data / "val" / "metadata.jsonl")
    print(f"\n[demo] outputs:\n  videos:   {data}/{{train,val}}/*.mp4\n  metadata: {data}/{{train,val}}/metadata.jsonl")


if __name__ == "__main__":
    main()
