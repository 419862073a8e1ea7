"""Train a Latte (video DiT) latent diffusion model. Latents come from a latents .npy (--latents_input_file,
made by latents.py; its VAE is the one its sidecar names) or are encoded on the fly from the videos with --vae
(default stabilityai/sd-vae-ft-mse, as upstream).

  python train_dit.py --model "Latte-S/2" --vae_model "zzsi_kungfu/videogpt/model-kbu39ped:v11" --batch_size 2 \\
      --num_clips_per_video 10 --lr 0.00002 --resolution 256 --sequence_length 4 --latent_input_size 64 \\
      --ae_temporal_stride 4 --ae_spatial_stride 4 --learn_sigma --ckpt_every 1000000 --sample_every 2000 \\
      --log_every 20 --epochs 100 --track
  python train_dit.py --model "Latte-T/2" --batch_size 2 --lr 0.00002 --resolution 256 --sequence_length 4 \\
      --latent_input_size 32 --ae_temporal_stride 1 --ae_spatial_stride 8 --learn_sigma --ckpt_every 1000000 \\
      --sample_every 5000 --log_every 100 --epochs 10000 --track          # stabilityai/sd-vae-ft-mse
  python train_dit.py ... --objective rf          # rectified flow (velocity, logit-normal t), Euler samples

--sequence_length counts LATENT frames (video frames = sequence_length * ae_temporal_stride), as upstream.
--objective eps (default) is DDPM noise prediction; rf turns --learn_sigma off (with a note).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from minisora.cli import Parser, add_diffusion_args, add_loop_args, add_run_args, add_vae_arg, diffusion_settings
from minisora.data import NUM_DIGITS, LatentDataset, VideoDataset, collate_videos, label_prior, stage_labels, to_model_range
from minisora.lit_diffusion import LitDiffusion
from minisora.resolve import load_stage_and_vae, load_vae
from minisora.stagefile import channel_stats, latent_stats
from minisora.training import fit, start_run
from models.latte import PRESETS, make_config

SD_VAE = "stabilityai/sd-vae-ft-mse"


def parse_args(argv=None):
    p = Parser(__doc__)
    m = p.add_argument_group("model")
    m.add_argument("--model", default="Latte-S/2", choices=sorted(PRESETS), metavar="PRESET", help=", ".join(PRESETS))
    m.add_argument("--extras", type=int, default=1, choices=[1, 2, 78],
                   help="1: unconditional; 2: conditioned on the digits present (metadata labels, CFG dropout); 78 (text): unsupported")
    m.add_argument("--num_classes", type=int, default=NUM_DIGITS, help="label classes with --extras 2 (digits: 10)")
    d = p.add_argument_group("data")
    add_vae_arg(d, help="VAE: checkpoint, wandb artifact or Hugging Face id. Default: with --latents_input_file the "
                        f"one named in its sidecar, else {SD_VAE} (as upstream)")
    d.add_argument("--latents_input_file", default=None, help="train on a latents .npy instead of encoding videos on the fly")
    d.add_argument("--resolution", type=int, default=128, help="video frame size fed to the VAE")
    d.add_argument("--sequence_length", type=int, default=16, help="LATENT frames (Latte num_frames)")
    d.add_argument("--ae_temporal_stride", type=int, default=None, help="checked against the VAE (default: the VAE's)")
    d.add_argument("--ae_spatial_stride", type=int, default=None, help="checked against the VAE (default: the VAE's)")
    d.add_argument("--latent_input_size", type=int, default=None, help="latent H=W; must equal resolution / spatial stride")
    d.add_argument("--num_clips_per_video", type=int, default=10, help="random clips drawn from each video per epoch")
    d.add_argument("--latent_stat_batches", type=int, default=8, help="batches encoded to estimate latent mean/std (on the fly)")
    add_loop_args(p)
    add_diffusion_args(p, learn_sigma_default=False)
    add_run_args(p, project="flying_mnist")
    p.set_defaults(epochs=10, max_steps=-1, clip_grad=0.5)
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    if a.extras == 78:
        sys.exit("error: --extras 78 (text conditioning) is not supported; use 1 (unconditional) or 2 (digit labels)")
    try:
        diffusion = diffusion_settings(a, "train_dit")
        labels = None
        if a.latents_input_file:
            arr, meta, vae = load_stage_and_vae(a.latents_input_file, "latents", a.vae, "train_dit")
            a.vae = vae.reference
            if a.extras == 2:
                labels = stage_labels(meta)
            mean, std = latent_stats(meta, arr)
            data = LatentDataset(arr, mean, std, a.sequence_length, labels=labels)
        else:
            a.vae = a.vae or SD_VAE
            vae = load_vae(a.vae)
            data = VideoDataset(a.dataset, "train", resolution=a.resolution, sequence_length=a.sequence_length * vae.temporal_stride,
                                data_dir=a.data_dir, num_clips_per_video=a.num_clips_per_video, random_clip=True,
                                as_uint8=True, on_error=a.on_bad_video, return_metadata=a.extras == 2)
            mean, std = estimate_stats(vae, data, a.batch_size, a.latent_stat_batches)
            labels = data.labels
        for flag, mine, theirs in (("--ae_temporal_stride", a.ae_temporal_stride, vae.temporal_stride),
                                   ("--ae_spatial_stride", a.ae_spatial_stride, vae.spatial_stride)):
            if mine is not None and mine != theirs:
                raise ValueError(f"{flag} {mine} but VAE {a.vae} has stride {theirs}")
        shape = vae.latent_shape(a.sequence_length * vae.temporal_stride, a.resolution, a.resolution) \
            if not a.latents_input_file else tuple(data[0]["latents"].shape)
        if a.latent_input_size is not None and a.latent_input_size != shape[2]:
            raise ValueError(f"--latent_input_size {a.latent_input_size} but the latents are {shape[2]}x{shape[3]} "
                             f"(resolution {a.resolution} / VAE spatial stride {vae.spatial_stride})")
        cfg = make_config(a.model, input_size=shape[2], num_frames=shape[1], in_channels=shape[0], learn_sigma=a.learn_sigma,
                          num_classes=a.num_classes if a.extras == 2 else 0, grad_checkpointing=a.grad_checkpointing)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    out = start_run(a, "train_dit")
    module = LitDiffusion("latte", cfg.to_dict(), diffusion,
                          {"mean": mean, "std": std, "shape": list(shape),
                           "source": a.latents_input_file or f"{a.dataset} (encoded on the fly)"},
                          a.vae, lr=a.lr, warmup_steps=a.warmup_steps, ema_decay=a.ema_decay,
                          sample_sampler=a.sampler, sample_steps=a.sample_steps, num_samples=a.num_samples,
                          sample_dir=str(out / "samples"), cfg_scale=a.cfg_scale,
                          label_prior=label_prior(labels))
    module.vae = vae
    n = sum(p.numel() for p in module.model.parameters())
    print(f"[train_dit] {a.model} ({a.objective}): {n / 1e6:.2f}M params, latents {shape}, {len(data)} clips/epoch; run dir {out}")
    fit(a, module, data, out=out, script="train_dit", collate_fn=collate_videos,
        checkpoints=dict(every_n_train_steps=a.ckpt_every, filename="step{step:07d}", save_top_k=-1))


@torch.no_grad()
def estimate_stats(vae, data, batch_size: int, batches: int):
    """Per-channel latent mean/std from a few encoded batches (stored in the checkpoint)."""
    from torch.utils.data import DataLoader

    zs = []
    for i, batch in enumerate(DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate_videos)):
        if i >= batches:
            break
        zs.append(vae.encode(to_model_range(batch["video"])).numpy())
    mean, std = channel_stats(np.concatenate(zs))
    return mean, [max(s, 1e-6) for s in std]


if __name__ == "__main__":
    main()
