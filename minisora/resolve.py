"""One resolver for every model reference (--vae, --resume_from, --checkpoint), and the network checks:

  * a local file or folder        -> a MiniSora checkpoint, or a diffusers AutoencoderKL folder
  * entity/project/name:vN        -> a wandb artifact, downloaded to data/artifacts/ (needs network + API key)
  * owner/name                    -> a Hugging Face id, loaded with diffusers (needs network or the HF cache)

Offline, the hub paths fail within seconds with a message saying what to do instead.
`load_vae` wraps both kinds of VAE behind one interface (VAEHandle) used by every later stage.
"""
from __future__ import annotations

import json
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange

from models import build_model

from minisora.checkpoint import FORMAT_VERSION, atomic_save, find_checkpoint, load_checkpoint, module_state_dict

WANDB_RE = re.compile(r"^[\w.-]+/[\w.-]+/[\w.-]+:[\w.-]+$")
HF_RE = re.compile(r"^[\w.-]+/[\w.-]+$")


def require_online(url: str, what: str, fallback: str, timeout: float = 4.0) -> None:
    """Fail fast (seconds, not minutes of retries) with a useful message when `url`'s host is unreachable."""
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(
            f"cannot reach {host} to download {what} ({type(e).__name__}: {e}). "
            f"This machine looks offline. Instead: {fallback}."
        ) from None



def reference_kind(ref: str) -> str:
    """'local', 'wandb' or 'hf'."""
    if Path(ref).exists():
        return "local"
    if WANDB_RE.match(ref) or ":" in ref:
        return "wandb"
    if HF_RE.match(ref):
        return "hf"
    raise FileNotFoundError(f"model reference {ref!r} is neither an existing path, a wandb artifact "
                            f"(entity/project/name:vN) nor a Hugging Face id (owner/name)")


def model_id(ref: str) -> str:
    """Short name used in stage-file names: sd-vae-ft-mse, model-nilqq143, or the run folder of a checkpoint."""
    p = Path(ref)
    if p.exists():
        if p.is_file() and p.parent.name == "checkpoints":
            return p.parent.parent.name
        return p.stem if p.is_file() else p.name
    return ref.rstrip("/").split("/")[-1].split(":")[0]


def download_wandb_artifact(ref: str, root: str | os.PathLike = "data/artifacts") -> Path:
    hint = (f"download it where wandb is reachable (`wandb artifact get {ref}`) and pass the local folder "
            f"or its model.ckpt instead")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        raise ConnectionError(f"cannot fetch wandb artifact {ref!r}: WANDB_MODE={os.environ['WANDB_MODE']}. Instead: {hint}")
    require_online("https://api.wandb.ai", what=f"wandb artifact {ref!r}", fallback=hint)
    import wandb

    target = Path(root) / ref.replace("/", "__").replace(":", "__")
    if not target.exists():
        wandb.Api().artifact(ref).download(root=str(target))
    return target


def resolve_checkpoint_path(ref: str) -> Path:
    """Local checkpoint file for a local path or a wandb artifact (a folder is searched for last.ckpt/model.ckpt)."""
    kind = reference_kind(ref)
    if kind == "hf":
        raise ValueError(f"{ref!r} looks like a Hugging Face id; a training checkpoint must be a path or a wandb artifact")
    return find_checkpoint(Path(ref) if kind == "local" else download_wandb_artifact(ref))


def newest_vae(runs: str | os.PathLike = "runs", quantize: bool | None = None) -> str | None:
    """The newest runs/train_vqvae/*/checkpoints/last.ckpt (quantize True/False: only VQ / only continuous ones)."""
    found = sorted(Path(runs).glob("train_vqvae/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in found:
        try:
            config = load_checkpoint(p, mmap=True)["minisora"]["config"]
        except (ValueError, OSError, KeyError):
            continue
        if quantize is None or bool(config.get("quantize")) == quantize:
            return str(p)
    return None


def choose_vae(ref: str | None, script: str, stage_meta: dict | None = None, quantize: bool | None = None,
               fallback: str | None = None) -> str:
    """What --vae means when it is not given, the same in every stage: the VAE named in the input stage file's
    sidecar; else `fallback` (train_dit.py: stabilityai/sd-vae-ft-mse, as upstream); else the newest MiniSora
    VAE under runs/train_vqvae/ that the stage accepts (quantize=True: a VQ-VAE; False: a continuous one
    preferred); else a ValueError saying what to pass. Says which one it picked."""
    if ref:
        return ref
    named = (stage_meta or {}).get("vae", {}).get("reference")
    if named:
        print(f"[{script}] --vae {named} (named in the input file's sidecar)")
        return named
    if fallback:
        return fallback
    found = newest_vae(quantize=quantize) or (newest_vae() if quantize is False else None)
    if found:
        print(f"[{script}] --vae not given: using the newest {'VQ-' if quantize else ''}VAE checkpoint, {found}")
        return found
    kind = "quantizing (VQ) " if quantize else ""
    raise ValueError(f"no --vae given and no {kind}VAE checkpoint under runs/train_vqvae/: train one "
                     f"(python train_vqvae.py --network_variant {'s4t4_m_vq' if quantize else 'vae_s4t4_m'} ...) or "
                     f"pass --vae <checkpoint | wandb artifact | Hugging Face id>")


# -------------------------------------------------------------------------------------------- VAEs
@dataclass
class VAEHandle:
    """A VAE behind one interface. Videos are (B, 3, T, H, W) in [-1, 1]; latents (B, C, t, h, w),
    already multiplied by `scaling_factor` (diffusers VAEs) -- divide before decoding is done here."""

    module: torch.nn.Module
    kind: str                  # "project" (models.vqvae.VideoVAE) or "diffusers" (2D AutoencoderKL, per frame)
    reference: str
    name: str
    latent_channels: int
    temporal_stride: int
    spatial_stride: int
    scaling_factor: float = 1.0
    quantize: bool = False
    n_codes: int | None = None
    config: dict = field(default_factory=dict)

    @property
    def device(self):
        return next(self.module.parameters()).device

    def to(self, device):
        self.module.to(device)
        return self

    def latent_shape(self, T: int, H: int, W: int) -> tuple[int, int, int, int]:
        if T % self.temporal_stride or H % self.spatial_stride or W % self.spatial_stride:
            raise ValueError(f"clip (T={T}, H={H}, W={W}) not divisible by the VAE strides "
                             f"(t={self.temporal_stride}, s={self.spatial_stride}) of {self.reference}")
        return self.latent_channels, T // self.temporal_stride, H // self.spatial_stride, W // self.spatial_stride

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Deterministic latents: the posterior mean (KL), pre-quantization vectors snapped to codes (VQ)."""
        if self.kind == "diffusers":
            b = video.shape[0]
            frames = rearrange(video, "b c t h w -> (b t) c h w").to(self.module.dtype)
            z = self.module.encode(frames).latent_dist.mean * self.scaling_factor
            return rearrange(z.float(), "(b t) c h w -> b c t h w", b=b)
        enc = self.module.encode(video)
        return (enc["quantized"] if self.quantize else enc["z"]).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.kind == "diffusers":
            b = latents.shape[0]
            z = rearrange(latents, "b c t h w -> (b t) c h w") / self.scaling_factor
            frames = self.module.decode(z.to(self.module.dtype)).sample.float()
            return rearrange(frames, "(b t) c h w -> b c t h w", b=b).clamp(-1, 1)
        return self.module.decode(latents).float().clamp(-1, 1)

    @torch.no_grad()
    def encode_codes(self, video: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            raise ValueError(f"{self.reference} does not quantize (variant {self.config.get('variant')}); "
                             f"tokens need a VQ variant such as s8_b or s4t4_b_vq")
        return self.module.encode_tokens(video)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.module.decode_codes(codes).float().clamp(-1, 1)

    @torch.no_grad()
    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        return self.module.quantizer.codes_to_vectors(codes)


def _is_diffusers_dir(p: Path) -> Path | None:
    for d in (p, p / "vae"):
        cfg = d / "config.json"
        if cfg.exists() and "AutoencoderKL" in json.loads(cfg.read_text()).get("_class_name", ""):
            return d
    return None


def _load_diffusers(src: str, ref: str) -> VAEHandle:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(src).eval()
    c = vae.config
    return VAEHandle(vae, "diffusers", ref, model_id(ref), c.latent_channels, 1,
                     2 ** (len(c.block_out_channels) - 1), float(c.scaling_factor or 1.0), config=dict(c))


def load_vae(ref: str, device: str | torch.device = "cpu") -> VAEHandle:
    """Load a VAE from a project checkpoint path, a wandb artifact name or a Hugging Face id."""
    kind = reference_kind(ref)
    if kind == "hf":
        if os.environ.get("HF_HUB_OFFLINE") != "1":
            require_online("https://huggingface.co", what=f"the Hugging Face VAE {ref!r}",
                           fallback="run where huggingface.co is reachable once (it is then cached), or pass a local folder")
        try:
            return _load_diffusers(ref, ref).to(device)
        except OSError as e:
            raise ConnectionError(f"cannot load Hugging Face VAE {ref!r} (offline and not in the HF cache?): "
                                  f"{str(e).splitlines()[0]}. Pass a local diffusers folder instead.") from None
    local = Path(ref) if kind == "local" else download_wandb_artifact(ref)
    if local.is_dir() and (d := _is_diffusers_dir(local)):
        return _load_diffusers(str(d), ref).to(device)
    ckpt = load_checkpoint(local)
    meta = ckpt["minisora"]
    if meta.get("kind") != "vae":
        raise ValueError(f"{ref} is a {meta.get('kind')!r} checkpoint, not a VAE")
    model = build_model("vae", meta["config"])
    model.load_state_dict(module_state_dict(ckpt))
    model.eval()
    cfg = model.config
    return VAEHandle(model, "project", ref, model_id(ref), cfg.embedding_dim, cfg.temporal_stride,
                     cfg.spatial_stride, 1.0, cfg.quantize, cfg.n_tokens if cfg.quantize else None,
                     config=cfg.to_dict()).to(device)


def derive_vae(vae: VAEHandle, path: str | os.PathLike, temporal_padding: str | None = None,
               merge_codes: float | None = None, motion_radius: int | None = None) -> VAEHandle:
    """A copy of a project VAE with its temporal padding changed, its near-duplicate codes merged
    (VectorQuantizer.merge_near_duplicates) and/or motion tokens after the first frame (models/motion.py),
    saved as a VAE checkpoint at `path` and loaded from there, so the stage files it makes name a VAE that
    reproduces them. Each changes only how clips are encoded and decoded; no weight changes."""
    if vae.kind != "project":
        raise ValueError(f"--temporal_padding / --merge_codes / --motion_tokens change a MiniSora VAE; "
                         f"{vae.reference} is {vae.kind}")
    cfg = {**vae.config, **({"temporal_padding": temporal_padding} if temporal_padding else {}),
           **({"motion_radius": motion_radius} if motion_radius is not None else {})}
    model = build_model("vae", cfg).to(vae.device)
    model.load_state_dict(vae.module.state_dict())
    derived = {"from": vae.reference, "temporal_padding": cfg.get("temporal_padding", "zeros"),
               "motion_radius": cfg.get("motion_radius", 0)}
    if merge_codes:
        if not (cfg.get("quantize") and cfg.get("quantizer", "vq") == "vq"):
            raise ValueError(f"--merge_codes needs a VQ tokenizer (an EMA codebook); {vae.reference} has none")
        derived.update(merge_codes=merge_codes, active_codes=model.quantizer.merge_near_duplicates(merge_codes))
    source = load_checkpoint(resolve_checkpoint_path(vae.reference), mmap=True)["minisora"]
    meta = {**{k: v for k, v in source.items() if k != "path"}, "format_version": FORMAT_VERSION,
            "config": model.config.to_dict(), "derived": derived}
    atomic_save({"state_dict": {f"model.{k}": v.cpu() for k, v in model.state_dict().items()}, "minisora": meta}, path)
    return load_vae(os.fspath(path), vae.device)


def load_stage_and_vae(path: str, kind: str, vae: str | None, script: str, device="cpu"):
    """(array, sidecar, VAEHandle) of a latents/tokens stage file and the VAE that made it (--vae, else the one
    its sidecar names), checked to match; tokens need a quantizing VAE."""
    from minisora.stagefile import check_vae_matches, load_stage

    arr, meta = load_stage(path, expect_kind=kind)
    handle = load_vae(choose_vae(vae, script, meta, quantize=True if kind == "tokens" else None), device)
    check_vae_matches(meta, handle, path)
    if kind == "tokens" and not handle.quantize:
        raise ValueError(f"{handle.reference} does not quantize: {path} needs the VQ-VAE that made it (its codebook)")
    return arr, meta, handle
