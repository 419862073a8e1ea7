"""One PNG to look at a generator: --num unconditional samples (left; --prior_labels: their digits drawn from the
training data's) and, for next-token models, continuations of the first --num val videos with their first --given
frames given (right); frames --frames top to bottom, one video per column. docs/token_path.md's GPT pictures are made by this.

  python bench/picture.py --checkpoint runs/train_latent_nanogpt/<run>/checkpoints/last.ckpt \\
      --dataset flying_mnist_demo --output docs/gpt_samples_continuations.png
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisora.cli import Parser, add_sampling_args, sampling_options  # noqa: E402
from minisora.data import VideoDataset  # noqa: E402
from minisora.generate import (continue_videos, generate_videos, is_diffusion, label_prompts, load_generator,  # noqa: E402
                               num_classes, prior_label_sets)
from minisora.video_io import to_uint8_frames  # noqa: E402


def grid(videos, frames) -> np.ndarray:
    """(N, C, T, H, W) in [-1, 1] -> uint8 (len(frames) * H, N * W, C): video n in column n, frame t in row t."""
    v = [to_uint8_frames(x) for x in videos]
    return np.concatenate([np.concatenate([x[t] for x in v], 1) for t in frames], 0)


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="a generator checkpoint (path or wandb artifact)")
    p.add_argument("--vae", default=None, help="the VAE to decode with (default: the one the checkpoint names)")
    p.add_argument("--dataset", default="flying_mnist_demo", help="val videos to continue")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--resolution", type=int, default=64, help="of the val videos (the generator's)")
    p.add_argument("--sequence_length", type=int, default=16, help="of the val videos (the generator's)")
    p.add_argument("--num", type=int, default=8, help="videos per half")
    p.add_argument("--given", type=int, default=4, help="frames given to a continuation (a multiple of the VAE's "
                                                         "temporal stride)")
    p.add_argument("--frames", type=int, nargs="+", default=[0, 3, 6, 9, 12, 15], help="frames shown, top to bottom")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="PNG path")
    p.add_argument("--prior_labels", action="store_true", help="class-conditional models: the samples' digits drawn "
                   "from the training data's, guided by --cfg_scale (sample.py --prior_labels)")
    add_sampling_args(p)
    a = p.parse_args(argv)
    module = load_generator(a.checkpoint, vae=a.vae)
    opts = sampling_options(a)
    prompts = {}
    if a.prior_labels:
        drawn = prior_label_sets(module, a.num, a.seed)
        prompts = dict(y=label_prompts(drawn, num_classes(module)))
        print(f"[picture] the samples' digits, left to right: {' '.join(','.join(map(str, d)) for d in drawn)}")
    halves = [grid(torch.stack(generate_videos(module, a.num, seed=a.seed, opts=opts, **prompts)), a.frames)]
    if not is_diffusion(module):  # next-token models continue videos
        ds = VideoDataset(a.dataset, "val", a.resolution, a.sequence_length, data_dir=a.data_dir)
        real = torch.stack([ds[i]["video"] for i in range(min(a.num, len(ds)))])
        halves += [np.full((halves[0].shape[0], 8, 3), 255, np.uint8),
                   grid(continue_videos(module, real, a.given, seed=a.seed, opts=opts), a.frames)]
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(halves, 1)).save(a.output)
    print(f"[picture] {a.output}: {a.num} samples" + (" | continuations" if len(halves) > 1 else ""))


if __name__ == "__main__":
    main()
