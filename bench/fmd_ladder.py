"""Does FMD rank videos as the eye does? Scores a ladder of known degradations of the held-out real videos, every
row at one sample size, with evaluate.py's own sets, feature network and digit classifier: FMD should grow as
the digits are lost, and sit between real and the worst rung where a rung's picture does.

Rungs: real; a 4-frame temporal average (the ghosting of a VAE that folds 4 frames into one latent frame); a
spatial blur; grey (chroma removed); strokes (half of each digit's ink removed, in blobs); frames shuffled; noise.

  python bench/fmd_ladder.py --dataset flying_mnist_demo --num_fmd 256
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evaluate  # noqa: E402
from minisora.evaluation import FMD, video_metrics  # noqa: E402


def temporal_average(v: np.ndarray, k: int = 4) -> np.ndarray:
    """Each frame replaced by the mean of its k-frame group (N, T, H, W, 3)."""
    n, t = v.shape[:2]
    g = v.reshape(n, t // k, k, *v.shape[2:]).astype(np.float32).mean(2, keepdims=True)
    return np.repeat(g, k, 2).reshape(v.shape).round().astype(np.uint8)


def blur(v: np.ndarray, passes: int = 2) -> np.ndarray:
    x = torch.from_numpy(v).float().permute(0, 1, 4, 2, 3).flatten(0, 1)  # (N T, 3, H, W)
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]) / 16
    for _ in range(passes):
        x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    return x.unflatten(0, v.shape[:2]).permute(0, 1, 3, 4, 2).round().clamp(0, 255).numpy().astype(np.uint8)


def grey(v: np.ndarray) -> np.ndarray:
    return np.repeat(v.astype(np.float32).mean(-1, keepdims=True), 3, -1).round().astype(np.uint8)


def strokes(v: np.ndarray, keep: float = 0.5, seed: int = 0) -> np.ndarray:
    """Half the ink gone, in 4x4-pixel blobs that stay put through a video (what is left: pieces of strokes)."""
    rng = np.random.default_rng(seed)
    n, t, h, w, _ = v.shape
    blobs = rng.random((n, 1, h // 4, w // 4)) < keep
    mask = np.repeat(np.repeat(blobs, 4, 2), 4, 3)[..., None]
    return (v * mask).astype(np.uint8)


def main(argv=None):
    a = evaluate.parse_args(argv)
    real = evaluate.real_sets(a)
    clf = evaluate.digit_classifier(a)
    fmd = FMD(evaluate.feature_net(a), real.reference, real.held_out)
    rungs = {"real (held out)": real.held_out, "4-frame temporal average": temporal_average(real.held_out),
             "spatial blur": blur(real.held_out), "grey": grey(real.held_out), "strokes": strokes(real.held_out),
             **evaluate.controls(real.held_out)}
    print(f"\n[fmd_ladder] {real.n} videos a side; FMD floor {fmd.floor(real.n):.3g}\n")
    print("| rung | legible / frame | digits / frame | chroma | FMD [90% interval] |\n|---|---|---|---|---|")
    for name, videos in rungs.items():
        m, f = video_metrics(videos, clf), fmd(videos)
        print(f"| {name} | {m['legible_per_frame']:.3f} | {m['digits_per_frame']:.3f} | {m['chroma']:.1f} | "
              f"{f['FMD']:.3g} [{f['FMD_90ci'][0]:.3g}, {f['FMD_90ci'][1]:.3g}] |", flush=True)


if __name__ == "__main__":
    main()
