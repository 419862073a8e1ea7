"""Train a Latte (video DiT) latent diffusion model. Latents come from a latents .npy (--latents_input_file,
made by latents.py) or are encoded on the fly from the videos with --vae_model (as upstream).

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

import argparse
import sys

import lightning as L
import torch

from minisora.data import LatentDataset, VideoDataset, collate_videos, load_labels, to_model_range
from minisora.lit_diffusion import LitDiffusion, add_diffusion_args, fit, latent_stats_from, resolve_objective
from minisora.resolve import load_vae
from minisora.stagefile import check_vae_matches, load_stage
from minisora.training import add_common_args, run_dir
from models.latte import PRESETS, make_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", default="Latte-S/2", choices=sorted(PRESETS), metavar="PRESET", help=", ".join(PRESETS))
    m.add_argument("--extras", type=int, default=1, choices=[1, 2, 78],
                   help="1: unconditional; 2: conditioned on the digits present (metadata labels, CFG dropout); 78 (text): unsupported")
    m.add_argument("--num_classes", type=int, default=10, help="label classes with --extras 2 (digits: 10)")
    m.add_argument("--cfg_scale", type=float, default=1.0, help="classifier-free guidance scale for samples (--extras 2)")
    d = p.add_argument_group("data")
    d.add_argument("--vae_model", "--vae", dest="vae_model", default="stabilityai/sd-vae-ft-mse",
                   help="VAE: checkpoint path, wandb artifact or Hugging Face id")
    d.add_argument("--latents_input_file", default=None, help="train on a latents .npy instead of encoding videos on the fly")
    d.add_argument("--resolution", type=int, default=128, help="video frame size fed to the VAE")
    d.add_argument("--sequence_length", type=int, default=16, help="LATENT frames (Latte num_frames)")
    d.add_argument("--ae_temporal_stride", type=int, default=None, help="checked against the VAE (default: the VAE's)")
    d.add_argument("--ae_spatial_stride", type=int, default=None, help="checked against the VAE (default: the VAE's)")
    d.add_argument("--latent_input_size", type=int, default=None, help="latent H=W; must equal resolution / spatial stride")
    d.add_argument("--num_clips_per_video", type=int, default=10, help="random clips drawn from each video per epoch")
    d.add_argument("--batch_size", type=int, default=2)
    d.add_argument("--latent_stat_batches", type=int, default=8, help="batches encoded to estimate latent mean/std (on the fly)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--max_steps", "--max_train_steps", dest="max_steps", type=int, default=-1)
    t.add_argument("--max_time", default=None, help="DD:HH:MM:SS")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--lr_warmup_steps", dest="warmup_steps", type=int, default=0)
    t.add_argument("--accumulate_grad_batches", "--gradient_accumulation_steps", dest="accumulate_grad_batches", type=int, default=1)
    t.add_argument("--clip_max_norm", "--clip_grad", dest="clip_grad", type=float, default=0.5, help="grad-norm clip (0: off)")
    t.add_argument("--start_clip_iter", type=int, default=0, help="clip only from this step on (upstream: 1000)")
    t.add_argument("--log_every", type=int, default=10)
    t.add_argument("--sample_every", type=int, default=100)
    t.add_argument("--ckpt_every", "--checkpoint_every", dest="ckpt_every", type=int, default=1000)
    t.add_argument("--resume_from_checkpoint", dest="resume_from", default=None, help="alias of --resume_from")
    add_diffusion_args(p, learn_sigma_default=False)
    add_common_args(p, project="flying_mnist")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    L.seed_everything(a.seed, workers=True)
    if a.extras == 78:
        sys.exit("error: --extras 78 (text conditioning) is not supported; use 1 (unconditional) or 2 (digit labels)")
    try:
        diffusion = resolve_objective(a, "train_dit")
        vae = load_vae(a.vae_model)
        for flag, mine, theirs in (("--ae_temporal_stride", a.ae_temporal_stride, vae.temporal_stride),
                                   ("--ae_spatial_stride", a.ae_spatial_stride, vae.spatial_stride)):
            if mine is not None and mine != theirs:
                raise ValueError(f"{flag} {mine} but VAE {a.vae_model} has stride {theirs}")
        labels = None
        if a.latents_input_file:
            arr, meta = load_stage(a.latents_input_file, expect_kind="latents")
            check_vae_matches(meta, vae, a.latents_input_file)
            if a.extras == 2:
                src = meta["source"]
                labels = load_labels(f"{src['dataset']}/{src['split']}", src["files"])
            mean, std = latent_stats_from(meta, arr)
            data = LatentDataset(arr, mean, std, a.sequence_length, labels=labels)
        else:
            frames = a.sequence_length * vae.temporal_stride
            data = VideoDataset(a.dataset, "train", resolution=a.resolution, sequence_length=frames, data_dir=a.data_dir,
                                num_clips_per_video=a.num_clips_per_video, random_clip=True, as_uint8=True, on_error=a.on_bad_video,
                                return_metadata=a.extras == 2)
            mean, std = estimate_stats(vae, data, a.batch_size, a.latent_stat_batches)
        shape = vae.latent_shape(a.sequence_length * vae.temporal_stride, a.resolution, a.resolution) \
            if not a.latents_input_file else tuple(data[0]["latents"].shape)
        if a.latent_input_size is not None and a.latent_input_size != shape[2]:
            raise ValueError(f"--latent_input_size {a.latent_input_size} but the latents are {shape[2]}x{shape[3]} "
                             f"(resolution {a.resolution} / VAE spatial stride {vae.spatial_stride})")
        cfg = make_config(a.model, input_size=shape[2], num_frames=shape[1], in_channels=shape[0], learn_sigma=a.learn_sigma,
                          num_classes=a.num_classes if a.extras == 2 else 0, grad_checkpointing=a.grad_checkpointing)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    out = run_dir(a, "train_dit")
    module = LitDiffusion("latte", cfg.to_dict(), diffusion,
                          {"mean": mean, "std": std, "shape": list(shape),
                           "source": a.latents_input_file or f"{a.dataset} (encoded on the fly)"},
                          a.vae_model, lr=a.lr, warmup_steps=a.warmup_steps, ema_decay=a.ema_decay,
                          sample_every=a.sample_every, sample_sampler=a.sampler, sample_steps=a.sample_steps,
                          num_samples=a.num_samples, sample_dir=str(out / "samples"), cfg_scale=a.cfg_scale)
    module.vae = vae
    n = sum(p.numel() for p in module.model.parameters())
    print(f"[train_dit] {a.model} ({a.objective}): {n / 1e6:.2f}M params, latents {shape}, {len(data)} clips/epoch; run dir {out}")
    fit(a, module, data, out, "train_dit", clip_start=a.start_clip_iter)


@torch.no_grad()
def estimate_stats(vae, data, batch_size: int, batches: int):
    """Per-channel latent mean/std from a few encoded batches (stored in the checkpoint)."""
    from torch.utils.data import DataLoader

    zs = []
    for i, batch in enumerate(DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate_videos)):
        if i >= batches:
            break
        zs.append(vae.encode(to_model_range(batch["video"])).transpose(0, 1).flatten(1))
    z = torch.cat(zs, 1).double()
    return z.mean(1).tolist(), z.std(1).clamp_min(1e-6).tolist()


if __name__ == "__main__":
    main()
