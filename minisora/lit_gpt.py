"""Lightning module for next-token video models on VQ codes (GPT, Mamba), shared by
train_latent_nanogpt.py, train_latent_mdgpt.py and train_latent_mamba.py: cosine LR with warmup,
periodic validation and sampling (codes -> VQ-VAE decoder -> mp4/gif), checkpoints with what sampling needs."""
from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch

from minisora.checkpoint import FORMAT_VERSION
from minisora.training import adamw, can_fuse, log_video, save_video_grid


def build_lm(kind: str, config: dict) -> torch.nn.Module:
    if kind == "gpt":
        from models.gpt import GPT, GPTConfig
        return GPT(GPTConfig(**config))
    if kind == "mamba":
        from models.mamba import MambaLM, MambaConfig
        return MambaLM(MambaConfig(**config))
    raise ValueError(f"unknown language-model kind {kind!r}")


class LitLM(L.LightningModule):
    def __init__(self, kind: str, model_config: dict, n_codes: int, grid: list, vae_reference: str,
                 learning_rate: float = 5e-4, min_lr: float = 1e-4, warmup_iters: int = 100, lr_decay_iters: int = 5000,
                 beta2: float = 0.99, weight_decay: float = 0.1, sample_interval: int = 0, sample_dir: str | None = None,
                 temperature: float = 1.0, top_k: int | None = 100, top_p: float | None = None, num_samples: int = 1,
                 prompt_frames: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_lm(kind, model_config)
        self.vae = None       # VAEHandle, set by the script
        self.prompts = None   # (B, t, h, w) codes of real videos for continuation samples

    def on_fit_start(self):
        if self.vae is not None:
            self.vae.to(self.device)

    def training_step(self, batch, batch_idx):
        _, loss = self.model(batch["x"], start=batch["start"], targets=batch["y"])
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch["x"]))
        return loss

    def validation_step(self, batch, batch_idx):
        _, loss = self.model(batch["x"], start=batch["start"], targets=batch["y"])
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch["x"]))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.trainer.fit_loop._should_accumulate():
            return
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        every = self.hparams.sample_interval
        if every and self.global_step % every == 0 and self.trainer.is_global_zero:
            self.sample_and_save(f"step{self.global_step:07d}")

    # ------------------------------------------------------------------------------ sample
    @torch.no_grad()
    def sample_codes(self, n: int, prompt_codes: torch.Tensor | None = None, seed: int = 0,
                     use_cache: bool = True) -> torch.Tensor:
        """Generate whole code grids (n, t, h, w). prompt_codes (n, t0, h, w): continue real first frames."""
        h = self.hparams
        grid = tuple(h.grid)
        bos = torch.full((n, 1), h.n_codes, dtype=torch.long, device=self.device)
        prompt = bos if prompt_codes is None else torch.cat([bos, prompt_codes.reshape(n, -1).long().to(self.device)], 1)
        total = math.prod(grid) + 1
        g = torch.Generator(device=self.device).manual_seed(seed)
        was = self.model.training
        self.model.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            seq = self.model.generate(prompt, total - prompt.shape[1], h.temperature, h.top_k, h.top_p, use_cache=use_cache,
                                      allowed=h.n_codes, generator=g)
        self.model.train(was)
        return seq[:, 1:].reshape(n, *grid)

    def sample_and_save(self, tag: str) -> Path | None:
        if self.vae is None or not self.hparams.sample_dir:
            return None
        t0 = time.time()
        n = self.hparams.num_samples
        codes = self.sample_codes(n, seed=self.global_step)
        dt = time.time() - t0
        videos = list(self.vae.decode_codes(codes.to(self.vae.device)))
        if self.prompts is not None and self.hparams.prompt_frames:
            p = self.prompts[:1, :self.hparams.prompt_frames]
            cont = self.sample_codes(1, p, seed=self.global_step + 1)
            videos.append(self.vae.decode_codes(cont.to(self.vae.device))[0])
        path = save_video_grid(videos, Path(self.hparams.sample_dir) / f"sample_{tag}.mp4", fps=5)
        rate = n * math.prod(self.hparams.grid) / dt
        print(f"[sample] {n} video(s), {rate:.1f} tokens/s -> {path}")
        if self.trainer is not None:
            for lg in self.trainer.loggers:
                lg.log_metrics({"sample/tokens_per_s": rate}, step=self.global_step)
        log_video(self.trainer, "sampled/generated_video", path, self.global_step, fps=5)
        return path

    # -------------------------------------------------------------------------------- misc
    def configure_optimizers(self):
        h = self.hparams
        opt = adamw(self.model, h.learning_rate, h.weight_decay, (0.9, h.beta2), matrices_only=True,
                    fused=can_fuse(self.trainer))

        def lr_at(step):  # linear warmup, cosine decay to min_lr at lr_decay_iters, then constant
            if step < h.warmup_iters:
                return (step + 1) / max(1, h.warmup_iters)
            if step >= h.lr_decay_iters:
                return h.min_lr / h.learning_rate
            r = (step - h.warmup_iters) / max(1, h.lr_decay_iters - h.warmup_iters)
            return (h.min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (h.learning_rate - h.min_lr)) / h.learning_rate
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        h = self.hparams
        checkpoint["minisora"] = {"format_version": FORMAT_VERSION, "kind": h.kind, "config": dict(h.model_config),
                                  "n_codes": h.n_codes, "grid": list(h.grid), "vae": h.vae_reference}


# ------------------------------------------------------------------------- shared script plumbing
def add_lm_args(p, project: str = "flying_mnist") -> None:
    from minisora.training import add_common_args

    d = p.add_argument_group("data")
    d.add_argument("--tokens_input_file", default="data/latents/flying_mnist__model-kbu39ped_tokens_32frames_train.npy",
                   help="tokens .npy from tokenize_videos.py (rows = videos)")
    d.add_argument("--vae_model_name", "--vae", dest="vae_model_name", default=None,
                   help="VQ-VAE that made the tokens (decodes samples); default: the one named in the sidecar")
    d.add_argument("--val_fraction", type=float, default=0.05, help="last fraction of rows held out for val/loss")
    t = p.add_argument_group("training (nanoGPT flags)")
    t.add_argument("--log_dir", default=None, help="upstream flag: alias of --output_dir")
    t.add_argument("--eval_interval", type=int, default=250, help="optimizer steps between val/loss evaluations")
    t.add_argument("--eval_iters", type=int, default=100, help="val batches per evaluation")
    t.add_argument("--log_interval", type=int, default=10)
    t.add_argument("--sample_interval", type=int, default=2000, help="optimizer steps between samples (0: off)")
    t.add_argument("--batch_size", type=int, default=32)
    t.add_argument("--block_size", type=int, default=1024)
    t.add_argument("--dropout", type=float, default=0.2)
    t.add_argument("--learning_rate", type=float, default=5e-4)
    t.add_argument("--max_iters", type=int, default=50000)
    t.add_argument("--max_time", default=None, help="DD:HH:MM:SS")
    t.add_argument("--lr_decay_iters", type=int, default=5000)
    t.add_argument("--min_lr", type=float, default=1e-4)
    t.add_argument("--beta2", type=float, default=0.99)
    t.add_argument("--warmup_iters", type=int, default=100)
    t.add_argument("--weight_decay", type=float, default=0.1)
    t.add_argument("--gradient_accumulation_steps", type=int, default=1)
    t.add_argument("--grad_clip", type=float, default=1.0)
    s = p.add_argument_group("sampling")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top_k", type=int, default=100)
    s.add_argument("--top_p", type=float, default=None)
    s.add_argument("--num_samples", type=int, default=1, help="videos per periodic sample")
    s.add_argument("--prompt_frames", type=int, default=1,
                   help="also continue a real val video from its first N latent frames (0: off)")
    add_common_args(p, project=project)


def load_tokens(a):
    """(array, sidecar, n_codes, VAEHandle) for a.tokens_input_file, with clear errors."""
    import warnings

    from minisora.resolve import load_vae
    from minisora.stagefile import check_vae_matches, load_stage

    arr, meta = load_stage(a.tokens_input_file, expect_kind="tokens")
    ref = a.vae_model_name or meta.get("vae", {}).get("reference")
    if not ref:
        raise ValueError(f"{a.tokens_input_file} has no sidecar naming its VAE: pass --vae_model_name")
    vae = load_vae(ref)
    check_vae_matches(meta, vae, a.tokens_input_file)
    n_codes = meta.get("n_codes") or vae.n_codes
    if not n_codes:
        raise ValueError(f"{ref} does not quantize: token models need the VQ-VAE that made {a.tokens_input_file}")
    if meta.get("inferred"):
        warnings.warn(f"vocabulary taken from the VAE codebook (K={n_codes}), not from the data's max", stacklevel=2)
    return arr, meta, n_codes, vae


def fit_lm(a, kind: str, model_config: dict, arr, n_codes: int, vae, script: str, only_predict_last: bool = False,
           context: tuple[int, int] | None = None):
    import numpy as np
    from torch.utils.data import DataLoader

    from minisora.data import TokenWindows
    from minisora.training import checkpoint_callback, make_trainer, resume_checkpoint, run_dir

    if a.log_dir:
        a.output_dir = a.log_dir
    L.seed_everything(a.seed, workers=True)
    n_val = max(1, int(len(arr) * a.val_fraction)) if len(arr) > 1 else 0
    train_rows, val_rows = range(0, len(arr) - n_val), range(len(arr) - n_val, len(arr))
    per_epoch = a.eval_interval * a.batch_size * a.gradient_accumulation_steps
    train = TokenWindows(arr, train_rows, a.block_size, n_codes, per_epoch, only_predict_last, context)
    val = TokenWindows(arr, val_rows or train_rows, a.block_size, n_codes, a.eval_iters * a.batch_size, only_predict_last,
                       context)
    out = run_dir(a, script)
    module = LitLM(kind, model_config, n_codes, list(arr.shape[1:]), vae.reference, a.learning_rate, a.min_lr,
                   a.warmup_iters, a.lr_decay_iters, a.beta2, a.weight_decay, a.sample_interval, str(out / "samples"),
                   a.temperature, a.top_k, a.top_p, a.num_samples, a.prompt_frames)
    module.vae = vae
    module.prompts = torch.from_numpy(np.asarray(arr[val_rows[0] if n_val else 0:][:1]).astype(np.int64))
    n = sum(p.numel() for p in module.model.parameters())
    print(f"[{script}] {kind} {n / 1e6:.2f}M params, vocab {n_codes}+BOS, grid {tuple(arr.shape[1:])} "
          f"({int(np.prod(arr.shape[1:]))} tokens/video), {len(train_rows)} train / {n_val} val videos; run dir {out}")
    ckpt = checkpoint_callback(dirpath=str(out / "checkpoints"), filename="best", monitor="val/loss", mode="min",
                               save_top_k=1)
    trainer = make_trainer(a, out, callbacks=[ckpt], max_steps=a.max_iters, max_epochs=-1, max_time=a.max_time,
                           accumulate_grad_batches=a.gradient_accumulation_steps, log_every_n_steps=a.log_interval,
                           clip_grad=a.grad_clip, num_sanity_val_steps=0)
    if a.compile:
        module.model.compile()  # in place: checkpoint keys stay model.* (torch.compile would add _orig_mod.)
    kw = dict(batch_size=a.batch_size, num_workers=a.num_workers, pin_memory=torch.cuda.is_available(),
              persistent_workers=a.num_workers > 0)
    resume = resume_checkpoint(a.resume_from)
    trainer.fit(module, DataLoader(train, **kw), DataLoader(val, **kw), ckpt_path=resume)
    if trainer.is_global_zero:
        path = module.sample_and_save(f"final_step{module.global_step:07d}")
        print(f"[{script}] done at step {module.global_step}, val/loss {float(trainer.callback_metrics.get('val/loss', float('nan'))):.4f}."
              f" checkpoint: {out / 'checkpoints' / 'last.ckpt'}\n[{script}] samples: {path or out / 'samples'}")
