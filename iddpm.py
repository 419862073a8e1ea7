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

import sys

from minisora.cli import Parser, add_diffusion_args, add_loop_args, add_run_args, add_vae_arg, diffusion_settings
from minisora.data import NUM_DIGITS, LatentDataset, collate_videos, label_prior, stage_labels
from minisora.lit_diffusion import LitDiffusion
from minisora.resolve import choose_vae, load_vae
from minisora.stagefile import check_vae_matches, latent_stats, load_stage
from minisora.training import fit, start_run
from models.stdit import PRESETS, STDiTConfig


def parse_args(argv=None):
    p = Parser(__doc__)
    d = p.add_argument_group("data")
    d.add_argument("--latents_input_file", default=None, help="(N, C, T, H, W) float latents .npy (priority over tokens)")
    d.add_argument("--tokens_input_file", default=None, help="(N, T, H, W) VQ codes .npy, mapped through the VAE codebook")
    add_vae_arg(d, help="the VAE that made the input file (decodes samples); default: the one named in its sidecar")
    d.add_argument("--latent_frames_to_generate", type=int, default=8, help="latent frames per training crop / sample")
    m = p.add_argument_group("model (ST-DiT)")
    m.add_argument("--model", default="STDiT-6/768", choices=sorted(PRESETS), metavar="PRESET",
                   help="size preset (" + ", ".join(PRESETS) + "); --depth/--hidden_size/--num_heads override it")
    m.add_argument("--depth", type=int, default=None)
    m.add_argument("--hidden_size", type=int, default=None)
    m.add_argument("--num_heads", type=int, default=None)
    m.add_argument("--patch_size", default="1,2,2", help="t,h,w")
    m.add_argument("--class_conditional", action="store_true", help="condition on the digits present (metadata labels)")
    m.add_argument("--enable_flashattn", action="store_true",
                   help="accepted for upstream compatibility: SDPA already uses flash kernels on GPUs that have them")
    t = p.add_argument_group("schedule")
    t.add_argument("--diffusion_steps", type=int, default=1000,
                   help="respaced steps used for training and sampling (base chain: 1000), as upstream (--objective eps)")
    add_loop_args(p)
    add_diffusion_args(p, learn_sigma_default=True)
    add_run_args(p, project="flying_mnist")
    p.set_defaults(max_steps=10000, epochs=-1, clip_grad=1.0)
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    path = a.latents_input_file or a.tokens_input_file
    if not path:
        sys.exit("error: give --latents_input_file or --tokens_input_file (made by latents.py / tokenize_videos.py)")
    try:
        diffusion = diffusion_settings(a, "iddpm", respace=a.diffusion_steps)
        if a.objective == "eps" and a.sampler != "ddpm" and a.sample_steps > a.diffusion_steps:
            print(f"[iddpm] --sample_steps {a.sample_steps} > --diffusion_steps {a.diffusion_steps}: periodic "
                  f"{a.sampler} samples use {a.diffusion_steps} steps (the chain's length)")
            a.sample_steps = a.diffusion_steps
        arr, meta = load_stage(path, expect_kind="latents" if a.latents_input_file else "tokens")
        a.vae = choose_vae(a.vae, "iddpm", meta)
        vae = load_vae(a.vae)
        check_vae_matches(meta, vae, path)
        codebook = None
        if meta["kind"] == "tokens":
            if not vae.quantize:
                raise ValueError(f"--vae {a.vae} has no codebook for --tokens_input_file")
            codebook = vae.module.quantizer.codebook.float().numpy()
        labels = stage_labels(meta) if a.class_conditional else None
        mean, std = latent_stats(meta, arr, codebook)
        data = LatentDataset(arr, mean, std, a.latent_frames_to_generate, codebook, labels=labels)
        shape = tuple(data[0]["latents"].shape)
        size = {k: v for k, v in PRESETS[a.model].items()}
        size.update({k: getattr(a, k) for k in ("depth", "hidden_size", "num_heads") if getattr(a, k) is not None})
        cfg = STDiTConfig(input_size=shape[1:], in_channels=shape[0], patch_size=tuple(int(v) for v in a.patch_size.split(",")),
                          learn_sigma=a.learn_sigma, num_classes=NUM_DIGITS if a.class_conditional else 0,
                          grad_checkpointing=a.grad_checkpointing, **size)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    out = start_run(a, "iddpm")
    module = LitDiffusion("stdit", cfg.to_dict(), diffusion,
                          {"mean": mean, "std": std, "shape": list(shape), "source": str(path)}, a.vae, lr=a.lr,
                          warmup_steps=a.warmup_steps, ema_decay=a.ema_decay, sample_sampler=a.sampler,
                          sample_steps=a.sample_steps, num_samples=a.num_samples, sample_dir=str(out / "samples"),
                          cfg_scale=a.cfg_scale, label_prior=label_prior(labels))
    module.vae = vae
    n = sum(p.numel() for p in module.model.parameters())
    print(f"[iddpm] ST-DiT ({a.objective}) {n / 1e6:.2f}M params on {len(data)} rows of {path} -> latents {shape}; run dir {out}")
    fit(a, module, data, out=out, script="iddpm", checkpoints=dict(every_n_train_steps=a.ckpt_every, filename="step{step:07d}",
                                                                   save_top_k=-1), collate_fn=collate_videos)


if __name__ == "__main__":
    main()
