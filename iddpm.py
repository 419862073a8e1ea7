"""Train an ST-DiT latent video diffusion model (improved DDPM: learned variance, hybrid loss) on a latents or
tokens .npy made by latents.py / tokenize_videos.py, decoding samples with the VAE that made it.

  python iddpm.py --batch_size 4 --accumulate_grad_batches 8 --latent_frames_to_generate 8 --diffusion_steps 1000 \\
      --max_steps 1000000 --log_every 50 --sample_every 2000 --clip_grad 1.0 --vae zzsi_kungfu/videogpt/model-nilqq143:v14 \\
      --latents_input_file data/latents/flying_mnist__model-nilqq143_latents_32frames_train.npy --track
  python iddpm.py ... --tokens_input_file data/latents/..._tokens_32frames_train.npy --vae <the VQ-VAE that made it>
  python iddpm.py ... --objective rf          # rectified flow: velocity prediction, Euler samples (learn_sigma off)

Steps, logging, sampling and checkpoints count optimizer steps. The checkpoint holds the model config, EMA
weights, diffusion settings, latent normalisation and the VAE reference: `python sample.py --checkpoint ...`.
"""
from __future__ import annotations

import argparse
import sys

import lightning as L

from minisora.lit_diffusion import LitDiffusion, add_diffusion_args, fit, latent_stats_from, resolve_objective
from minisora.resolve import load_vae
from minisora.stagefile import check_vae_matches, load_stage
from minisora.training import add_common_args, run_dir
from models.stdit import STDiTConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--latents_input_file", default=None, help="(N, C, T, H, W) float latents .npy (priority over tokens)")
    d.add_argument("--tokens_input_file", default=None, help="(N, T, H, W) VQ codes .npy, mapped through the VAE codebook")
    d.add_argument("--vae", default="zzsi_kungfu/videogpt/model-kbu39ped:v11", help="the VAE that made the file (decodes samples)")
    d.add_argument("--latent_frames_to_generate", type=int, default=8, help="latent frames per training crop / sample")
    d.add_argument("--batch_size", type=int, default=2)
    m = p.add_argument_group("model (ST-DiT)")
    m.add_argument("--depth", type=int, default=6)
    m.add_argument("--hidden_size", type=int, default=768)
    m.add_argument("--num_heads", type=int, default=3)
    m.add_argument("--patch_size", default="1,2,2", help="t,h,w")
    m.add_argument("--class_conditional", action="store_true", help="condition on the digits present (metadata labels)")
    m.add_argument("--enable_flashattn", action="store_true",
                   help="accepted for upstream compatibility: SDPA already uses flash kernels on GPUs that have them")
    t = p.add_argument_group("training")
    t.add_argument("--diffusion_steps", type=int, default=1000,
                   help="respaced steps used for training and sampling (base chain: 1000), as upstream (--objective eps)")
    t.add_argument("--max_steps", type=int, default=10000, help="optimizer steps")
    t.add_argument("--epochs", type=int, default=-1)
    t.add_argument("--max_time", default=None, help="DD:HH:MM:SS")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--warmup_steps", type=int, default=0)
    t.add_argument("--accumulate_grad_batches", type=int, default=1)
    t.add_argument("--clip_grad", type=float, default=1.0, help="global grad-norm clip (0: off)")
    t.add_argument("--log_every", type=int, default=10)
    t.add_argument("--sample_every", type=int, default=100, help="optimizer steps between samples (0: off)")
    t.add_argument("--checkpoint_every", "--ckpt_every", dest="ckpt_every", type=int, default=1000)
    add_diffusion_args(p, learn_sigma_default=True)
    add_common_args(p, project="flying_mnist")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    L.seed_everything(a.seed, workers=True)
    path = a.latents_input_file or a.tokens_input_file
    if not path:
        sys.exit("error: give --latents_input_file or --tokens_input_file (made by latents.py / tokenize_videos.py)")
    from minisora.data import LatentDataset, load_labels
    try:
        diffusion = resolve_objective(a, "iddpm", respace=a.diffusion_steps)
        if a.objective == "eps" and a.sampler != "ddpm" and a.sample_steps > a.diffusion_steps:
            print(f"[iddpm] --sample_steps {a.sample_steps} > --diffusion_steps {a.diffusion_steps}: periodic "
                  f"{a.sampler} samples use {a.diffusion_steps} steps (the chain's length)")
            a.sample_steps = a.diffusion_steps
        arr, meta = load_stage(path, expect_kind="latents" if a.latents_input_file else "tokens")
        vae = load_vae(a.vae)
        check_vae_matches(meta, vae, path)
        codebook = vae.module.quantizer.codebook.float().numpy() if meta["kind"] == "tokens" else None
        if meta["kind"] == "tokens" and codebook is None:
            raise ValueError(f"--vae {a.vae} has no codebook for --tokens_input_file")
        labels = None
        if a.class_conditional:
            src = meta.get("source", {})
            labels = load_labels(f"{src['dataset']}/{src['split']}", src["files"])
        mean, std = latent_stats_from(meta, arr, codebook)
        data = LatentDataset(arr, mean, std, a.latent_frames_to_generate, codebook, labels=labels)
        shape = tuple(data[0]["latents"].shape)
        cfg = STDiTConfig(input_size=shape[1:], in_channels=shape[0], patch_size=tuple(int(v) for v in a.patch_size.split(",")),
                          hidden_size=a.hidden_size, depth=a.depth, num_heads=a.num_heads, learn_sigma=a.learn_sigma,
                          num_classes=10 if a.class_conditional else 0, grad_checkpointing=a.grad_checkpointing)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    out = run_dir(a, "iddpm")
    module = LitDiffusion("stdit", cfg.to_dict(), diffusion,
                          {"mean": mean, "std": std, "shape": list(shape), "source": str(path)}, a.vae, lr=a.lr,
                          warmup_steps=a.warmup_steps, ema_decay=a.ema_decay, sample_every=a.sample_every,
                          sample_sampler=a.sampler, sample_steps=a.sample_steps, num_samples=a.num_samples,
                          sample_dir=str(out / "samples"))
    module.vae = vae
    n = sum(p.numel() for p in module.model.parameters())
    print(f"[iddpm] ST-DiT ({a.objective}) {n / 1e6:.2f}M params on {len(data)} rows of {path} -> latents {shape}; run dir {out}")
    fit(a, module, data, out, "iddpm")


if __name__ == "__main__":
    main()
