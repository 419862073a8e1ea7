"""Lightning module that trains a models.vqvae.VideoVAE (plain AE, KL-VAE, VQ-VAE)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

from minisora.checkpoint import FORMAT_VERSION
from minisora.data import to_model_range
from minisora.metrics import psnr, ssim
from minisora.training import can_fuse, log_video
from minisora.video_io import save_video_grid
from models.vqvae import VAEConfig, VideoVAE


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


class LitVAE(L.LightningModule):
    def __init__(self, config: dict, lr: float = 1e-3, reinit_every_n_epochs: int | None = None,
                 log_videos_every: int = 500, sample_dir: str | None = None, lr_patience: int = 5,
                 data: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.config = VAEConfig.from_dict(config)
        self.model = VideoVAE(self.config)
        k = self.config.n_codes if self.config.quantize else 1
        self.register_buffer("train_counts", torch.zeros(k), persistent=False)
        self.register_buffer("val_counts", torch.zeros(k), persistent=False)
        self._recent_z: torch.Tensor | None = None

    # -------------------------------------------------------------------------------- train
    def training_step(self, batch, batch_idx):
        x = to_model_range(batch["video"])
        out = self.model(x)
        logs = {f"train/{k}": out[k].detach() for k in ("loss", "recon_loss", "kl_loss", "vq_loss")}
        logs["train/psnr"] = psnr(out["recon"].detach(), x).mean()
        if self.config.quantize:
            self.train_counts += out["counts"]
            logs["train/perplexity"] = out["perplexity"]
            z = out["z"].detach().transpose(1, -1).reshape(-1, self.config.embedding_dim)
            self._recent_z = z[torch.randperm(len(z), device=z.device)[:4 * self.config.n_codes]]
        self.log_dict(logs, prog_bar=False, sync_dist=False)
        self.log("loss", out["loss"].detach(), prog_bar=True, logger=False)
        every = self.hparams.log_videos_every
        if every and self.global_step % every == 0 and self.trainer.is_global_zero:
            self._save_recon(x[0], out["recon"][0].detach(), "train")
        return out["loss"]

    def on_train_epoch_end(self):
        if not self.config.quantize:
            return
        counts = _all_reduce(self.train_counts.clone())
        used = (counts > 0).float().mean() * 100
        self.log("train/codebook_usage", used, sync_dist=False)
        n = self.hparams.reinit_every_n_epochs
        if n and (self.current_epoch + 1) % n == 0 and self._recent_z is not None:
            z = self._recent_z
            if dist.is_available() and dist.is_initialized():  # every rank uses rank 0's samples
                dist.broadcast(z, 0)
            dead = self.model.quantizer.reinit_dead_codes(z, counts)
            self.log("train/reinit_codes", float(dead), sync_dist=False)
        self.train_counts.zero_()

    # ---------------------------------------------------------------------------------- val
    def validation_step(self, batch, batch_idx):
        x = to_model_range(batch["video"])
        out = self.model(x, sample_posterior=False)
        b = len(x)
        self.log_dict({"val/recon_loss": out["recon_loss"], "val/kl_loss": out["kl_loss"]}, sync_dist=True, batch_size=b)
        self.log_dict({"val/psnr": psnr(out["recon"], x).mean(), "val/ssim": ssim(out["recon"], x).mean()},
                      sync_dist=True, batch_size=b, prog_bar=True)  # shown in the progress bar
        if self.config.quantize:
            self.val_counts += out["counts"]
        if batch_idx == 0 and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._save_recon(x[0], out["recon"][0], "val")

    def on_validation_epoch_end(self):
        if not self.config.quantize or self.trainer.sanity_checking:
            self.val_counts.zero_()
            return
        counts = _all_reduce(self.val_counts.clone())
        p = counts / counts.sum().clamp_min(1)
        self.log("val/codebook_usage", (counts > 0).float().mean() * 100, sync_dist=False, prog_bar=True)
        self.log("val/perplexity", torch.exp(-(p * p.clamp_min(1e-10).log()).sum()), sync_dist=False)
        self.val_counts.zero_()

    def _save_recon(self, x, recon, split):
        if not self.hparams.sample_dir:
            return
        residual = (recon.float() - x.float()).abs() * 2 - 1  # |error| mapped to [-1, 1] for display
        path = Path(self.hparams.sample_dir) / f"{split}_recon_step{self.global_step:07d}.mp4"
        save_video_grid([x, recon.float().clamp(-1, 1), residual], path, gif=False)
        log_video(self.trainer, f"{split}/reconstructions", path, self.global_step)

    # --------------------------------------------------------------------------------- misc
    def configure_optimizers(self):
        opt = torch.optim.Adam(self.model.parameters(), lr=self.hparams.lr, betas=(0.9, 0.99), fused=can_fuse(self.trainer) or None)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=self.hparams.lr_patience)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/recon_loss", "interval": "epoch",
                                                   "strict": False}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["minisora"] = {"format_version": FORMAT_VERSION, "kind": "vae", "config": self.config.to_dict(),
                                  "data": self.hparams.data or {}}
