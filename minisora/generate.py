"""Generators behind one interface, for sample.py, evaluate.py and the demo: load any generator checkpoint
(diffusion: train_dit.py / iddpm.py; next-token: train_latent_*.py) with its VAE, and generate videos."""
from __future__ import annotations

import torch

from minisora.checkpoint import load_checkpoint
from minisora.data import draw_label_sets, hold_last_frame, multi_hot
from minisora.resolve import load_vae, resolve_checkpoint_path
from models import build_model

DIFFUSION, TOKEN_MODELS = ("latte", "stdit"), ("gpt", "mamba")


def load_generator(ref: str, device: str = "cpu", vae: str | None = None):
    """A diffusion (LitDiffusion) or token (LitLM) module from its checkpoint (read once), eval mode, with `.vae`
    loaded (the checkpoint's VAE reference, or `vae`)."""
    ckpt = load_checkpoint(resolve_checkpoint_path(ref))
    meta = ckpt["minisora"]
    kind = meta.get("kind")
    if kind in DIFFUSION:
        from minisora.lit_diffusion import LitDiffusion
        module = LitDiffusion(kind, meta["config"], meta["diffusion"], meta["latent"], vae or meta["vae"],
                              ema_decay=meta.get("ema_decay", 0.9999), label_prior=meta.get("label_prior"))
    elif kind in TOKEN_MODELS:
        from minisora.lit_gpt import LitLM
        # the sampling defaults it was trained with (--temperature, --top_k, ..., --ink_temperature and the background
        # codes that needs); LitLM's own defaults for checkpoints that lack one
        hp = ckpt.get("hyper_parameters") or {}
        module = LitLM(kind, meta["config"], meta["n_codes"], meta["grid"], vae or meta["vae"],
                       label_prior=meta.get("label_prior"), **{k: hp[k] for k in LitLM.SAMPLING_DEFAULTS if k in hp})
    else:
        raise ValueError(f"{ref} is a {kind!r} checkpoint, not a video generator ({', '.join(DIFFUSION + TOKEN_MODELS)})")
    module.load_state_dict(ckpt["state_dict"])
    module.vae = load_vae(vae or meta["vae"], device)
    return module.to(device).eval()


def load_guide(ref: str | None, module, device: str = "cpu"):
    """The weaker GPT that autoguidance pushes `module`'s draws away from (`--guide_checkpoint`: an earlier
    checkpoint of the same run, e.g. runs/<run>/checkpoints/step0001000.ckpt from --checkpoint_every), or None."""
    if ref is None:
        return None
    if is_diffusion(module) or module.hparams.kind != "gpt":
        raise ValueError("--guide_checkpoint: autoguidance is implemented for GPT checkpoints only")
    from models.gpt import check_guide

    ckpt = load_checkpoint(resolve_checkpoint_path(ref))
    meta = ckpt["minisora"]
    if meta.get("kind") != "gpt":
        raise ValueError(f"--guide_checkpoint {ref} is a {meta.get('kind')!r} checkpoint: the guide must be a GPT")
    guide = build_model("gpt", meta["config"])
    guide.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
    check_guide(module.model, guide)
    return guide.to(device).eval()


def is_diffusion(module) -> bool:
    return hasattr(module, "sample_latents")


def num_classes(module) -> int:
    """Label classes of a class-conditional generator (0: unconditional)."""
    return int((getattr(module.hparams, "model_config", None) or {}).get("num_classes") or 0)


@torch.no_grad()
def generate_videos(module, n: int, batch_size: int = 8, seed: int = 0, sampler: str | None = "dpm++", steps: int = 25,
                    y: torch.Tensor | None = None, use_ema: bool = True, cfg_scale: float = 1.0,
                    temperature: float | None = None, top_k: int | None = None,
                    top_p: float | None = None, later_temperature: float | None = None,
                    first_frame_candidates: int = 1, ink_temperature: float | None = None, guide=None,
                    guide_scale: float = 1.0) -> list[torch.Tensor]:
    """n videos (3, T, H, W) in [-1, 1] on the CPU, in batches (batch i uses seed + i * batch_size).

    Diffusion models use sampler/steps/y/use_ema/cfg_scale. sampler: dpm++ | ddim | ddpm for epsilon models,
    euler | heun for rectified-flow ones (an epsilon sampler such as the default dpm++ becomes euler there,
    said once). y: None (a class-conditional model gets its null label), or a float multi-hot tensor (1, C)
    (the same prompt for every video) or (n, C) (one row per video); cfg_scale: classifier-free guidance
    scale (1: none). Token models take y and cfg_scale too (class-conditional GPTs; guidance on the logits)
    and temperature / top_k / top_p (None: the trained values; top_k 0 and top_p 1 turn them off) /
    later_temperature (past the first latent frame; None: temperature's) / first_frame_candidates (K > 1:
    each video's first latent frame is the best of K draws by the model's own label reading) / ink_temperature
    (the digit codes' temperature; None: the trained default) / guide, guide_scale (autoguidance by a weaker GPT of
    the same run, from load_guide; GPT.generate); batched
    KV-cache decoding: each step is cheap, a batch fills the matmuls."""
    diffusion = is_diffusion(module)
    if y is not None:
        if y.dim() != 2 or y.shape[0] not in (1, n):
            raise ValueError(f"y must be a multi-hot tensor of shape (1, C) or ({n}, C), got {tuple(y.shape)}")
        if not num_classes(module):
            from minisora.diffusion import note_once
            note_once("[sample] labels given to an unconditional model: ignored")
            y = None
    if diffusion:
        sampler = module.diffusion.resolve_sampler(sampler)  # rf: dpm++ -> euler, with a note (once)
    videos = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        yb = None if y is None else (y.expand(b, -1) if y.shape[0] == 1 else y[i:i + b]).float()
        if diffusion:
            z = module.sample_latents(b, sampler, steps, seed=seed + i, y=yb, use_ema=use_ema, cfg_scale=cfg_scale)
            videos.extend(module.vae.decode(z).cpu())
        else:
            codes = module.sample_codes(b, seed=seed + i, temperature=temperature, top_k=top_k, top_p=top_p, y=yb,
                                        cfg_scale=cfg_scale, later_temperature=later_temperature,
                                        first_frame_candidates=first_frame_candidates, ink_temperature=ink_temperature,
                                        guide=guide, guide_scale=guide_scale)
            videos.extend(module.vae.decode_codes(codes).cpu())
    return videos


@torch.no_grad()
def continue_videos(module, real: torch.Tensor, given: int, batch_size: int = 8, seed: int = 0,
                    temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                    y: torch.Tensor | None = None, cfg_scale: float = 1.0,
                    later_temperature: float | None = None, first_frame_candidates: int = 1,
                    ink_temperature: float | None = None, guide=None, guide_scale: float = 1.0) -> torch.Tensor:
    """Continuations of real videos (N, 3, T, H, W) in [-1, 1] by a next-token model: only the first `given`
    frames (a multiple of the VAE's temporal stride) are encoded -- nothing of the future leaks through a
    non-causal encoder -- and the model generates the rest of the code grid. Returns (N, 3, T, H, W) on the
    CPU: the given frames exactly as they were, then the decoded continuation. y (N, classes) multi-hot, with
    cfg_scale: label prompts of a class-conditional model (e.g. the digits read in the given frames).
    first_frame_candidates: accepted with the other sampling settings and unused (the first frames are given).

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
    out = []
    for i in range(0, len(real), batch_size):
        x = real[i:i + batch_size].to(vae.device)
        codes = vae.encode_codes(hold_last_frame(x, given, 2))[:, :given // stride]
        kw = {} if y is None else dict(y=y[i:i + batch_size].float(), cfg_scale=cfg_scale)
        full = module.sample_codes(len(x), codes, seed=seed + i, temperature=temperature, top_k=top_k, top_p=top_p,
                                   later_temperature=later_temperature, ink_temperature=ink_temperature,
                                   guide=guide, guide_scale=guide_scale, **kw)
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
