"""Sample videos from any generator checkpoint: diffusion (train_dit.py / iddpm.py) or next-token
(train_latent_nanogpt.py / train_latent_mamba.py / train_latent_mdgpt.py). Writes N videos as mp4 files
plus an mp4 + gif grid. The checkpoint alone is enough (model config, EMA weights, latent statistics or
codebook size, VAE reference).

  python sample.py --checkpoint runs/iddpm/<run>/checkpoints/last.ckpt --num_videos 8 --sampler dpm++ --steps 25
  python sample.py --checkpoint ... --sampler ddpm --steps 1000          # upstream's 1000-step ancestral sampler
  python sample.py --checkpoint <an --objective rf run> --sampler heun --steps 15   # rf: euler (default) | heun
  python sample.py --checkpoint ... --labels 3 7 --cfg_scale 2           # class-conditional models (--extras 2)
  python sample.py --checkpoint ... --prompts 3,7 1 0,5 --cfg_scale 2    # one digit set per video (cycled)
  python sample.py --checkpoint runs/train_latent_nanogpt/<run>/checkpoints/last.ckpt --temperature 1 --top_k 100
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from minisora.checkpoint import load_checkpoint
from minisora.resolve import load_vae, resolve_checkpoint_path
from minisora.training import save_video_grid

DIFFUSION, TOKEN_MODELS = ("latte", "stdit"), ("gpt", "mamba")


def load_generator(ref: str, device: str = "cpu", vae: str | None = None):
    """A diffusion (LitDiffusion) or token (LitLM) module from its checkpoint, eval mode, with `.vae` loaded."""
    ckpt = load_checkpoint(resolve_checkpoint_path(ref))
    meta = ckpt["minisora"]
    kind = meta.get("kind")
    if kind in DIFFUSION:
        from minisora.lit_diffusion import LitDiffusion
        module = LitDiffusion(kind, meta["config"], meta["diffusion"], meta["latent"], vae or meta["vae"],
                              ema_decay=meta.get("ema_decay", 0.9999))
    elif kind in TOKEN_MODELS:
        from minisora.lit_gpt import LitLM
        module = LitLM(kind, meta["config"], meta["n_codes"], meta["grid"], vae or meta["vae"])
    else:
        raise ValueError(f"{ref} is a {kind!r} checkpoint, not a video generator ({', '.join(DIFFUSION + TOKEN_MODELS)})")
    module.load_state_dict(ckpt["state_dict"])
    module.vae = load_vae(vae or meta["vae"], device)
    return module.to(device).eval()


@torch.no_grad()
def generate_videos(module, n: int, batch_size: int = 8, seed: int = 0, sampler: str = "dpm++", steps: int = 25,
                    y: torch.Tensor | None = None, use_ema: bool = True, cfg_scale: float = 1.0) -> list[torch.Tensor]:
    """n videos (3, T, H, W) in [-1, 1] on the CPU, in batches (batch i uses seed + i * batch_size).

    Diffusion models use sampler/steps/y/use_ema/cfg_scale. sampler: dpm++ | ddim | ddpm for epsilon models,
    euler | heun for rectified-flow ones (an epsilon sampler such as the default dpm++ becomes euler there,
    said once). y: None (a class-conditional model gets its null label), or a float multi-hot tensor (1, C)
    (the same prompt for every video) or (n, C) (one row per video); cfg_scale: classifier-free guidance
    scale (1: none). Token models take no y: they use their hparams' temperature/top_k/top_p (batched
    KV-cache decoding: each step is cheap, a batch fills the matmuls)."""
    diffusion = hasattr(module, "sample_latents")
    if y is not None:
        if not diffusion:
            raise ValueError("y (labels) is for class-conditional diffusion models, not token models")
        if y.dim() != 2 or y.shape[0] not in (1, n):
            raise ValueError(f"y must be a multi-hot tensor of shape (1, C) or ({n}, C), got {tuple(y.shape)}")
        if not module.hparams.model_config.get("num_classes"):
            from minisora.diffusion import note_once
            note_once("[sample] labels given to an unconditional model: ignored")
            y = None
    if diffusion:
        sampler = module.diffusion.resolve_sampler(sampler)  # rf: dpm++ -> euler, with a note (once)
    videos = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        if diffusion:
            yb = None if y is None else (y.expand(b, -1) if y.shape[0] == 1 else y[i:i + b]).float()
            z = module.sample_latents(b, sampler, steps, seed=seed + i, y=yb, use_ema=use_ema, cfg_scale=cfg_scale)
            videos.extend(module.vae.decode(z).cpu())
        else:
            videos.extend(module.vae.decode_codes(module.sample_codes(b, seed=seed + i)).cpu())
    return videos


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="generator checkpoint: local path or wandb artifact")
    p.add_argument("--num_videos", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--vae", default=None, help="override the VAE reference stored in the checkpoint")
    p.add_argument("--output_dir", default=None, help="default: runs/sample/<checkpoint run>")
    p.add_argument("--fps", type=float, default=5)
    p.add_argument("--device", default=None)
    d = p.add_argument_group("diffusion checkpoints")
    d.add_argument("--sampler", default=None, choices=["dpm++", "ddim", "ddpm", "euler", "heun"],
                   help="eps models: dpm++ (default) | ddim | ddpm; rf models: euler (default) | heun")
    d.add_argument("--steps", type=int, default=25, help="sampler steps (ddpm: respaced ancestral steps; heun: 2 "
                                                           "model calls per step)")
    d.add_argument("--no_ema", action="store_true", help="use the raw weights instead of the EMA ones")
    d.add_argument("--labels", type=int, nargs="+", default=None, help="digits to condition on (class-conditional "
                   "models), the same set for every video")
    d.add_argument("--prompts", nargs="+", default=None, metavar="SET",
                   help="one digit set per video, cycled, e.g. --prompts 3,7 1 0,5 (class-conditional models)")
    d.add_argument("--cfg_scale", type=float, default=1.0)
    t = p.add_argument_group("token-model checkpoints (default: the values the model was trained with)")
    t.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    t.add_argument("--top_k", type=int, default=None, help="0 = off")
    t.add_argument("--top_p", type=float, default=None, help="1 = off")
    a = p.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        module = load_generator(a.checkpoint, device, a.vae)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    diffusion = hasattr(module, "sample_latents")
    y = None
    if diffusion:
        try:
            sampler = module.diffusion.resolve_sampler(a.sampler)
        except ValueError as e:
            sys.exit(f"error: --sampler: {e}")
        if a.labels is not None or a.prompts is not None:
            k = module.hparams.model_config.get("num_classes")
            if not k:
                sys.exit("error: --labels/--prompts given but the model is unconditional")
            try:
                sets = [a.labels] if a.prompts is None else [[int(d) for d in s.split(",")] for s in a.prompts]
            except ValueError:
                sys.exit(f"error: --prompts takes comma-separated digit sets, e.g. 3,7 1; got {a.prompts}")
            if any(not 0 <= d < k for s in sets for d in s):
                sys.exit(f"error: digits must be in 0..{k - 1}")
            y = torch.zeros(len(sets) if a.prompts is None else a.num_videos, k, device=device)
            for i in range(len(y)):
                y[i, sets[i % len(sets)]] = 1
    else:
        if a.labels is not None or a.prompts is not None:
            sys.exit("error: --labels/--prompts are for class-conditional diffusion models")
        if a.temperature is not None:
            module.hparams.temperature = a.temperature
        if a.top_k is not None:
            module.hparams.top_k = a.top_k or None
        if a.top_p is not None:
            module.hparams.top_p = a.top_p if a.top_p < 1 else None
    ck = Path(a.checkpoint)
    out = Path(a.output_dir) if a.output_dir else Path("runs/sample") / (ck.parent.parent.name if ck.exists() else ck.name)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    videos = generate_videos(module, a.num_videos, a.batch_size, a.seed, sampler if diffusion else None, a.steps, y,
                             use_ema=not a.no_ema, cfg_scale=a.cfg_scale)
    dt = time.time() - t0
    for i, v in enumerate(videos):
        save_video_grid([v], out / f"{i:03d}.mp4", fps=a.fps, gif=False)
    grid = save_video_grid(videos, out / "grid.mp4", fps=a.fps)
    how = f"{sampler}, {a.steps} steps" if diffusion else \
        f"temperature {module.hparams.temperature}, top-k {module.hparams.top_k}, top-p {module.hparams.top_p}"
    print(f"[sample] {a.num_videos} videos ({how}) in {dt:.1f}s "
          f"({dt / a.num_videos:.2f}s per video) -> {out}/000.mp4 ... and grid {grid} + {grid.with_suffix('.gif')}")


if __name__ == "__main__":
    main()
