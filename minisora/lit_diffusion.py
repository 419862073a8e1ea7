"""Lightning module for latent video diffusion (Latte or ST-DiT denoisers), used by train_dit.py and
iddpm.py: epsilon (hybrid-loss) or rectified-flow training, EMA weights, periodic sampling with the EMA model
decoded by the VAE, and checkpoints that alone are enough to sample (model config, EMA, diffusion settings
incl. the objective, latent normalisation statistics, VAE reference)."""
from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch

from minisora.checkpoint import FORMAT_VERSION
from minisora.data import to_model_range
from minisora.diffusion import make_diffusion
from minisora.training import adamw, can_fuse, log_video
from minisora.video_io import save_video_grid
from models import build_model


class LitDiffusion(L.LightningModule):
    # hyperparameters a checkpoint hands to sampling as its recipe's defaults (minisora.generate.load_generator)
    SAMPLING_DEFAULTS = ("sample_sampler", "sample_steps", "cfg_scale")

    def __init__(self, kind: str, model_config: dict, diffusion: dict, latent: dict, vae_reference: str,
                 lr: float = 1e-4, weight_decay: float = 0.0, warmup_steps: int = 0, ema_decay: float = 0.9999,
                 sample_sampler: str | None = None, sample_steps: int = 25, num_samples: int = 2,
                 sample_dir: str | None = None, cfg_scale: float = 1.0, label_prior: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(kind, model_config)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        if diffusion.get("objective", "eps") == "rf" and model_config.get("learn_sigma"):
            raise ValueError("rectified flow (objective rf) predicts a velocity: the model needs learn_sigma off")
        self.diffusion = make_diffusion(diffusion)  # GaussianDiffusion (eps) or RectifiedFlow (rf)
        self.register_buffer("latent_mean", torch.tensor(latent["mean"]).float().view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latent_std", torch.tensor(latent["std"]).float().view(1, -1, 1, 1, 1), persistent=False)
        self.vae = None        # set by the script (not a submodule: not trained, not saved)

    def on_fit_start(self):
        if self.vae is not None:
            self.vae.to(self.device)

    # ------------------------------------------------------------------------------- train
    def batch_latents(self, batch) -> torch.Tensor:
        if "latents" in batch:
            return batch["latents"].float()
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):  # train_dit.py: pixels -> VAE
            z = self.vae.encode(to_model_range(batch["video"]))
        return (z - self.latent_mean) / self.latent_std

    def training_step(self, batch, batch_idx):
        x0 = self.batch_latents(batch)
        y = batch.get("labels") if self.hparams.model_config.get("num_classes") else None
        terms = self.diffusion.training_losses(self.model, x0, y=y)
        loss = terms["loss"].mean()
        logs = {"train/loss": loss.detach(), "train/mse": terms["mse"].mean().detach(),
                "train/x_std": x0.std().detach()}
        if "vb" in terms:
            logs["train/vb"] = terms["vb"].mean().detach()
        q = (self.diffusion.timestep_fraction(terms["t"]) * 4).floor().clamp(0, 3)
        for k in range(4):  # loss by timestep quartile of the noise level in [0, 1] (q0: least noisy)
            m = q == k
            if m.any():
                logs[f"train/loss_q{k}"] = terms["loss"][m].mean().detach()
        self.log_dict(logs, batch_size=len(x0))
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    def optimizer_step(self, *args, **kwargs):
        """The optimizer step, then the EMA update: inside the step (not in on_train_batch_end, which runs after
        the checkpoint callbacks), so a checkpoint's EMA matches its weights and a resume continues exactly."""
        super().optimizer_step(*args, **kwargs)
        # EMA warm-up: the decay grows as (1+n)/(10+n) up to --ema_decay, so a short run's EMA is not
        # dominated by the initial weights (0.9999 ** 2000 still keeps 82% of them)
        n = self.global_step + 1  # optimizer steps done, this one included
        d = min(self.hparams.ema_decay, (1.0 + n) / (10.0 + n)) if n > 1 else 0.0
        ema_p, p = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema_p, [x.detach() for x in p], 1.0 - d)

    # ------------------------------------------------------------------------------ sample
    @torch.no_grad()
    def sample_latents(self, n: int, sampler: str | None, steps: int, seed: int = 0, y: torch.Tensor | None = None,
                       use_ema: bool = True, cfg_scale: float | None = None) -> torch.Tensor:
        """n latents (de-normalised). sampler: the objective's (None: its default; see diffusion.resolve_sampler);
        y: (n, num_classes) multi-hot labels or None (a class-conditional model then gets the null label);
        cfg_scale: classifier-free guidance scale (None: the module's hparams.cfg_scale)."""
        net = self.ema if use_ema else self.model
        shape = self.hparams.latent["shape"]  # (C, t, h, w)
        g = torch.Generator(device=self.device).manual_seed(seed)
        scale = self.hparams.cfg_scale if cfg_scale is None else cfg_scale
        if y is not None:
            y = y.to(self.device)
        if y is not None and scale != 1.0:
            fn = lambda x, t: net.forward_with_cfg(x, t, y, scale)  # noqa: E731
        else:
            fn = lambda x, t: net(x, t, y)  # noqa: E731
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            z = self.diffusion.sample(fn, (n, *shape), sampler=sampler, steps=steps, generator=g, device=self.device)
        return z.float() * self.latent_std + self.latent_mean

    def sampling(self, o=None) -> dict:
        """sample_latents keywords: the settings `o` (a minisora.generate.Sampling) gives, the checkpoint's recipe
        defaults (--sampler, --sample_steps, --cfg_scale of its training run) for those it leaves None."""
        from minisora.generate import chosen

        h = self.hparams
        return dict(sampler=self.diffusion.resolve_sampler(chosen(o, "sampler", h.sample_sampler)),
                    steps=chosen(o, "steps", h.sample_steps), cfg_scale=chosen(o, "cfg_scale", h.cfg_scale),
                    use_ema=True if o is None else o.use_ema)

    def sample_and_save(self, tag: str) -> Path | None:
        if self.vae is None or not self.hparams.sample_dir:
            return None
        was = self.training
        self.eval()
        z = self.sample_latents(self.hparams.num_samples, self.hparams.sample_sampler, self.hparams.sample_steps,
                                seed=self.global_step)
        videos = self.vae.decode(z)
        path = save_video_grid(list(videos), Path(self.hparams.sample_dir) / f"sample_{tag}.mp4", fps=5)
        log_video(self.trainer, "sampled/generated_video", path, self.global_step, fps=5)
        self.train(was)
        return path

    # -------------------------------------------------------------------------------- misc
    def configure_optimizers(self):
        opt = adamw(self.model, self.hparams.lr, self.hparams.weight_decay, fused=can_fuse(self.trainer))
        warm = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        h = self.hparams
        checkpoint["minisora"] = {"format_version": FORMAT_VERSION, "kind": h.kind, "config": dict(h.model_config),
                                  "diffusion": dict(h.diffusion), "latent": dict(h.latent),
                                  "vae": h.vae_reference, "ema_decay": h.ema_decay, "label_prior": h.get("label_prior")}
