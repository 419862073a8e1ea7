"""Lightning module for latent video diffusion (Latte or ST-DiT denoisers), shared by train_dit.py and
iddpm.py: epsilon (hybrid-loss) or rectified-flow training, EMA weights, periodic sampling with the EMA model
decoded by the VAE, and checkpoints that alone are enough to sample (model config, EMA, diffusion settings
incl. the objective, latent normalisation statistics, VAE reference)."""
from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch

from minisora.checkpoint import FORMAT_VERSION
from minisora.data import collate_videos, to_model_range
from minisora.diffusion import make_diffusion
from minisora.training import adamw, can_fuse, log_video, save_video_grid


def build_denoiser(kind: str, config: dict) -> torch.nn.Module:
    if kind == "latte":
        from models.latte import Latte, LatteConfig
        return Latte(LatteConfig(**config))
    if kind == "stdit":
        from models.stdit import STDiT, STDiTConfig
        return STDiT(STDiTConfig(**config))
    raise ValueError(f"unknown denoiser kind {kind!r}")


class LitDiffusion(L.LightningModule):
    def __init__(self, kind: str, model_config: dict, diffusion: dict, latent: dict, vae_reference: str,
                 lr: float = 1e-4, weight_decay: float = 0.0, warmup_steps: int = 0, ema_decay: float = 0.9999,
                 sample_every: int = 0, sample_sampler: str | None = None, sample_steps: int = 25, num_samples: int = 2,
                 sample_dir: str | None = None, cfg_scale: float = 1.0):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_denoiser(kind, model_config)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        if diffusion.get("objective", "eps") == "rf" and model_config.get("learn_sigma"):
            raise ValueError("rectified flow (objective rf) predicts a velocity: the model needs learn_sigma off")
        self.diffusion = make_diffusion(diffusion)  # GaussianDiffusion (eps) or RectifiedFlow (rf)
        self.register_buffer("latent_mean", torch.tensor(latent["mean"]).float().view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latent_std", torch.tensor(latent["std"]).float().view(1, -1, 1, 1, 1), persistent=False)
        self.vae = None        # set by the script (not a submodule: not trained, not saved)
        self._seen_step = None  # global_step at the last on_train_batch_end (sampling follows optimizer steps)

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

    def on_train_start(self):
        self._seen_step = self.global_step

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step == self._seen_step:  # no optimizer step in this batch (gradient accumulation)
            return
        self._seen_step = self.global_step
        every = self.hparams.sample_every
        if every and self.global_step % every == 0 and self.trainer.is_global_zero:
            self.sample_and_save(f"step{self.global_step:07d}")

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
                                  "vae": h.vae_reference, "ema_decay": h.ema_decay}


# ------------------------------------------------------------------------- shared script plumbing
def add_diffusion_args(p, learn_sigma_default: bool) -> None:
    import argparse

    g = p.add_argument_group("diffusion")
    g.add_argument("--learn_sigma", action=argparse.BooleanOptionalAction, default=learn_sigma_default,
                   help="learned-range variance + hybrid loss (output 2C channels); else fixed variance")
    g.add_argument("--noise_schedule", default="linear", choices=["linear", "cosine"], help="eps only")
    g.add_argument("--ema_decay", type=float, default=0.9999,
                   help="EMA of the weights used for sampling; warms up as (1+step)/(10+step) until it reaches this")
    g.add_argument("--objective", default="eps", choices=["eps", "rf"],
                   help="eps: DDPM noise prediction (optionally learned variance); rf: rectified flow (velocity "
                        "prediction, logit-normal t; learn_sigma is turned off)")
    g.add_argument("--sampler", default=None, choices=["dpm++", "ddim", "ddpm", "euler", "heun"],
                   help="sampler for periodic samples (default: dpm++ for eps, euler for rf)")
    g.add_argument("--sample_steps", type=int, default=25, help="sampler steps for periodic samples")
    g.add_argument("--num_samples", type=int, default=2, help="videos per periodic sample")
    g.add_argument("--grad_checkpointing", action="store_true", help="recompute activations in backward (less memory)")


def resolve_objective(a, script: str, respace: int | None = None) -> dict:
    """The checkpoint's `diffusion` settings from the diffusion flags. --objective rf turns learn_sigma off (one
    printed line) and samples with euler/heun (default euler; an eps sampler becomes euler, with a note);
    eps: dpm++ by default, euler/heun refused (ValueError). Sets a.learn_sigma and a.sampler accordingly."""
    from minisora.diffusion import make_diffusion

    if a.objective == "rf":
        if a.learn_sigma:
            print(f"[{script}] --objective rf predicts a velocity (C output channels): learn_sigma turned off")
            a.learn_sigma = False
        d = {"objective": "rf", "learn_sigma": False, "steps": 1000}  # steps: the model's timestep scale (t * 1000)
    else:
        d = {"objective": "eps", "schedule": a.noise_schedule, "steps": 1000, "learn_sigma": a.learn_sigma}
        if respace is not None:
            d["respace"] = respace
    a.sampler = make_diffusion(d).resolve_sampler(a.sampler)
    return d


def latent_stats_from(meta: dict, array, codebook=None, rows: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean/std: from the sidecar, else estimated from the first rows (tokens: their code vectors)."""
    import numpy as np

    if "channel_mean" in meta and "channel_std" in meta:
        return meta["channel_mean"], [max(s, 1e-6) for s in meta["channel_std"]]
    x = np.asarray(array[:rows])
    if codebook is not None:
        x = np.moveaxis(codebook[x.astype(np.int64)], -1, 1)
    x = np.asarray(x, np.float64).swapaxes(0, 1).reshape(x.shape[1], -1)
    return x.mean(1).tolist(), np.maximum(x.std(1), 1e-6).tolist()


def fit(a, module: "LitDiffusion", train_data, out, script: str, callbacks=(), clip_start: int = 0) -> None:
    """Train with the project's Trainer, checkpoint every a.ckpt_every steps (+ last.ckpt), resume if asked;
    gradients clipped to a.clip_grad from optimizer step clip_start on."""
    from torch.utils.data import DataLoader

    from minisora.training import checkpoint_callback, make_trainer, resume_checkpoint

    ckpt = checkpoint_callback(dirpath=str(out / "checkpoints"), filename="step{step:07d}", auto_insert_metric_name=False,
                               every_n_train_steps=a.ckpt_every, save_top_k=-1)
    trainer = make_trainer(a, out, callbacks=[ckpt, *callbacks], max_epochs=a.epochs, max_steps=a.max_steps, max_time=a.max_time,
                           accumulate_grad_batches=a.accumulate_grad_batches, log_every_n_steps=a.log_every,
                           clip_grad=a.clip_grad, clip_start=clip_start, limit_val_batches=0, num_sanity_val_steps=0)
    if a.compile:
        module.model.compile()  # in place: checkpoint keys stay model.* (torch.compile would add _orig_mod.)
    loader = DataLoader(train_data, batch_size=a.batch_size, shuffle=True, num_workers=a.num_workers,
                        drop_last=len(train_data) >= a.batch_size, pin_memory=torch.cuda.is_available(),
                        persistent_workers=a.num_workers > 0, collate_fn=collate_videos)
    resume = resume_checkpoint(a.resume_from)
    trainer.fit(module, loader, ckpt_path=resume)
    if trainer.is_global_zero:
        path = module.sample_and_save(f"final_step{module.global_step:07d}")
        print(f"[{script}] done at step {module.global_step}. checkpoint: {out / 'checkpoints' / 'last.ckpt'}\n"
              f"[{script}] samples: {path or out / 'samples'}  metrics: {out / 'metrics.csv'}\n"
              f"[{script}] sample more: python sample.py --checkpoint {out / 'checkpoints' / 'last.ckpt'} --num_videos 8")
