"""Generators behind one interface, for sample.py, evaluate.py and the demo: load any generator checkpoint
(diffusion: train_dit.py / iddpm.py; next-token: train_latent_*.py) with its VAE, and generate videos."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minisora.checkpoint import load_checkpoint
from minisora.data import draw_label_sets, hold_last_frame, multi_hot
from minisora.resolve import load_vae, resolve_checkpoint_path

DIFFUSION, TOKEN_MODELS = ("latte", "stdit"), ("gpt", "mamba")


@dataclass
class Sampling:
    """Sampling settings as a user gives them (sample.py / evaluate.py flags), passed whole to the generator.
    None: the checkpoint's own recipe value (what its training run was told: --sampler, --sample_steps,
    --cfg_scale, --temperature, ...), so a checkpoint alone gives its recipe's samples.

    Diffusion: sampler (eps: dpm++ | ddim | ddpm; rf: euler | heun), steps, use_ema. Token models: temperature
    (0: greedy), top_k (0: off), top_p (1: off), ink_temperature (the digit codes' own temperature). Both:
    cfg_scale, classifier-free guidance with label prompts (1: none)."""
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    ink_temperature: float | None = None
    use_ema: bool = True


def load_generator(ref: str, device: str = "cpu", vae: str | None = None):
    """A diffusion (LitDiffusion) or token (LitLM) module from its checkpoint (read once), eval mode, with `.vae`
    loaded (the checkpoint's VAE reference, or `vae`)."""
    ckpt = load_checkpoint(resolve_checkpoint_path(ref))
    meta = ckpt["minisora"]
    kind = meta.get("kind")
    if kind in DIFFUSION:
        from minisora.lit_diffusion import LitDiffusion
        module = LitDiffusion(kind, meta["config"], meta["diffusion"], meta["latent"], vae or meta["vae"],
                              ema_decay=meta.get("ema_decay", 0.9999), label_prior=meta.get("label_prior"),
                              **recipe_sampling(ckpt, LitDiffusion))
    elif kind in TOKEN_MODELS:
        from minisora.lit_gpt import LitLM
        module = LitLM(kind, meta["config"], meta["n_codes"], meta["grid"], vae or meta["vae"],
                       label_prior=meta.get("label_prior"), **recipe_sampling(ckpt, LitLM))
    else:
        raise ValueError(f"{ref} is a {kind!r} checkpoint, not a video generator ({', '.join(DIFFUSION + TOKEN_MODELS)})")
    module.load_state_dict(ckpt["state_dict"])
    module.vae = load_vae(vae or meta["vae"], device)
    return module.to(device).eval()


def chosen(o: Sampling | None, name: str, recipe):
    """The value of setting `name`: the one `o` gives, else the checkpoint's recipe value."""
    value = None if o is None else getattr(o, name)
    return recipe if value is None else value


def describe_sampling(module, opts: Sampling | None = None) -> str:
    """The settings a generator draws with (its recipe's, unless `opts` changes them), in words; ValueError for
    settings the checkpoint cannot take (so scripts can refuse them before any work)."""
    if is_diffusion(module):
        s = module.sampling(opts)
        return f"{s['sampler']}, {s['steps']} steps, guidance {s['cfg_scale']}"
    s = module.token_sampling(opts)
    how = f"temperature {s.temperature}, top-k {s.top_k}, top-p {s.top_p}, guidance {s.cfg_scale}"
    return how if s.ink_temperature is None else how + f", digit codes at temperature {s.ink_temperature}"


def recipe_sampling(ckpt: dict, cls) -> dict:
    """The sampling settings a checkpoint's training run was given (its recipe's: sampler, steps, guidance scale,
    temperatures, and the background codes a digit-code temperature needs); the module's defaults for the others."""
    hp = ckpt.get("hyper_parameters") or {}
    return {k: hp[k] for k in cls.SAMPLING_DEFAULTS if k in hp}


def is_diffusion(module) -> bool:
    return hasattr(module, "sample_latents")


def num_classes(module) -> int:
    """Label classes of a class-conditional generator (0: unconditional)."""
    return int((getattr(module.hparams, "model_config", None) or {}).get("num_classes") or 0)


def check_prompts(module, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """y: None, or float multi-hot prompts (1, C) (the same for every video) or (n, C); an unconditional model
    ignores them (said once)."""
    if y is None:
        return None
    if y.dim() != 2 or y.shape[0] not in (1, n):
        raise ValueError(f"y must be a multi-hot tensor of shape (1, C) or ({n}, C), got {tuple(y.shape)}")
    if not num_classes(module):
        from minisora.diffusion import note_once
        note_once("[sample] labels given to an unconditional model: ignored")
        return None
    return y.float().expand(n, -1)


@torch.no_grad()
def generate_videos(module, n: int, batch_size: int = 8, seed: int = 0, opts: Sampling | None = None,
                    y: torch.Tensor | None = None) -> list[torch.Tensor]:
    """n videos (3, T, H, W) in [-1, 1] on the CPU, in batches (batch i uses seed + i * batch_size), drawn as
    `opts` says (None or None fields: the checkpoint's recipe); y: label prompts (check_prompts)."""
    y = check_prompts(module, y, n)
    diffusion = is_diffusion(module)
    settings = module.sampling(opts) if diffusion else module.token_sampling(opts)
    videos = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        yb = None if y is None else y[i:i + b]
        if diffusion:
            videos.extend(module.vae.decode(module.sample_latents(b, seed=seed + i, y=yb, **settings)).cpu())
        else:
            codes = module.sample_codes(b, seed=seed + i, opts=settings, y=yb)
            videos.extend(module.vae.decode_codes(codes).cpu())
    return videos


@torch.no_grad()
def continue_videos(module, real: torch.Tensor, given: int, batch_size: int = 8, seed: int = 0,
                    opts: Sampling | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
    """Continuations of real videos (N, 3, T, H, W) in [-1, 1] by a next-token model: only the first `given`
    frames (a multiple of the VAE's temporal stride) are encoded -- nothing of the future leaks through a
    non-causal encoder -- and the model generates the rest of the code grid. Returns (N, 3, T, H, W) on the
    CPU: the given frames exactly as they were, then the decoded continuation. y (N, classes) multi-hot: label
    prompts of a class-conditional model (e.g. the digits read in the given frames).

    The given frames are encoded as a whole clip of T frames whose future is the last given frame held still
    (minisora.data.hold_last_frame). A non-causal encoder shown the given frames alone sees a clip shape it never
    trained on: the s4t4 tokenizer's codes for 4 frames alone agree with its whole-clip codes at 0.4% of places and
    decode at 18.1 dB (25.9 whole-clip), a prompt the GPT reads at 5.9 nats/token (2.0 on whole-clip codes);
    held still, 62% agree and the loss is 1.9. A causal encoder gives the same codes either way."""
    if is_diffusion(module):
        raise ValueError("continuation needs a next-token model (GPT / Mamba checkpoint); diffusion models here "
                         "generate whole clips")
    vae, stride = module.vae, module.vae.temporal_stride
    if given <= 0 or given % stride or given >= real.shape[2]:
        raise ValueError(f"--continuation {given}: must be a positive multiple of the VAE's temporal stride "
                         f"({stride}) below the clip length ({real.shape[2]})")
    y = check_prompts(module, y, len(real))
    settings = module.token_sampling(opts)
    out = []
    for i in range(0, len(real), batch_size):
        x = real[i:i + batch_size].to(vae.device)
        codes = vae.encode_codes(hold_last_frame(x, given, 2))[:, :given // stride]
        full = module.sample_codes(len(x), codes, seed=seed + i, opts=settings,
                                   y=None if y is None else y[i:i + batch_size])
        video = vae.decode_codes(full.to(vae.device)).float().clamp(-1, 1)
        out.append(torch.cat([x[:, :, :given], video[:, :, given:]], 2).cpu())
    return torch.cat(out)


def prior_label_sets(module, n: int, seed: int = 0) -> list[list[int]]:
    """n digit sets drawn from the training data's (the checkpoint's label_prior): prompts for samples nobody
    prompted (sample.py / evaluate.py --prior_labels), drawn then guided like any prompt, as RCG draws its condition."""
    prior = module.hparams.get("label_prior")
    if not num_classes(module):
        raise ValueError("--prior_labels draws digit prompts for a class-conditional model; this one is unconditional")
    if not prior:
        raise ValueError("--prior_labels: this checkpoint keeps no label prior (trained before checkpoints kept the "
                         "training data's digit sets); prompt it with --labels / --prompts instead")
    return draw_label_sets(prior, n, seed)


def label_prompts(label_sets: list[list[int]], classes: int, device="cpu") -> torch.Tensor:
    """(len(label_sets), classes) float multi-hot prompts."""
    return torch.stack([multi_hot(s, classes) for s in label_sets]).to(device)
