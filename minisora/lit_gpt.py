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
from minisora.training import adamw, can_fuse, log_video
from minisora.video_io import save_video_grid
from models import build_model
from models.gpt import TokenSampling, below
from models.motion import InkTracker, token_ranges


@torch.no_grad()
def background_codes(tokens, vae, n_codes: int, clips: int = 16, level: int = 40, share: float = 0.9) -> list[int]:
    """Codes that decode to empty cells: decode the first `clips` code grids of `tokens` (N, t, h, w) with `vae`
    (a VAEHandle) and keep the codes whose cells (the stride block of pixels each code decodes to) stay below
    `level` of 255 in every channel in at least `share` of their occurrences (the background code and the dark
    halo codes around digits). What sample_logits' ink_temperature leaves at the model's own odds."""
    import numpy as np

    codes = torch.from_numpy(np.asarray(tokens[:clips]).astype(np.int64))
    ts, ss = vae.temporal_stride, vae.spatial_stride
    dark, seen = torch.zeros(n_codes), torch.zeros(n_codes)
    for i in range(0, len(codes), 8):
        c = codes[i:i + 8]
        video = vae.decode_codes(c.to(vae.device)).float().cpu()  # (b, 3, T, H, W) in [-1, 1]
        peak = ((video.amax(1) + 1) * 127.5).unflatten(1, (-1, ts)).unflatten(3, (-1, ss)).unflatten(5, (-1, ss))
        peak = peak.amax((2, 4, 6))  # (b, t, h, w): the brightest pixel of each code's cell
        seen.index_add_(0, c.flatten(), torch.ones(c.numel()))
        dark.index_add_(0, c.flatten(), (peak < level).flatten().float())
    return [int(k) for k in torch.nonzero((seen > 0) & (dark >= share * seen)).flatten()]


class LitLM(L.LightningModule):
    checkpoints = dict(filename="best", monitor="val/loss", mode="min", save_top_k=1)  # kept: the best val/loss
    # hyperparameters a checkpoint hands to sampling as its recipe's defaults (minisora.generate.load_generator)
    SAMPLING_DEFAULTS = ("temperature", "top_k", "top_p", "cfg_scale", "ink_temperature", "background_codes")

    def __init__(self, kind: str, model_config: dict, n_codes: int, grid: list, vae_reference: str,
                 learning_rate: float = 5e-4, min_lr: float = 1e-4, warmup_iters: int = 100, lr_decay_iters: int = 5000,
                 beta2: float = 0.99, weight_decay: float = 0.1, sample_dir: str | None = None,
                 temperature: float = 1.0, top_k: int | None = 100, top_p: float | None = None, num_samples: int = 1,
                 prompt_frames: int = 0, cfg_scale: float = 1.0, ink_temperature: float | None = None,
                 background_codes: list[int] | None = None, label_prior: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(kind, model_config)
        self.vae = None       # VAEHandle, set by the script
        self.prompts = None   # (B, t, h, w) codes of real videos for continuation samples

    @classmethod
    def from_flags(cls, a, kind: str, model_config: dict, n_codes: int, array, vae, sample_dir: str, prompt_rows=None,
                   labels: list[list[int]] | None = None):
        """The module the token scripts train, from the flags of minisora.cli.add_lm_args; `vae` (a VAEHandle)
        decodes its samples, `prompt_rows` (held-out rows of `array`) give the continuation samples' first frames,
        `labels` (class-conditional: every row's digits) the label prior its checkpoints keep (--prior_labels)."""
        import numpy as np

        from minisora.data import label_prior

        module = cls(kind, model_config, n_codes, list(array.shape[1:]), vae.reference, a.lr, a.min_lr, a.warmup_steps,
                     a.lr_decay_iters, a.beta2, a.weight_decay, sample_dir, a.temperature, a.top_k, a.top_p,
                     a.num_samples, a.prompt_frames, a.cfg_scale, a.ink_temperature,
                     background_codes(array, vae, n_codes), label_prior(labels))
        module.vae = vae
        first = prompt_rows[0] if prompt_rows else 0
        module.prompts = torch.from_numpy(np.asarray(array[first:first + 1]).astype(np.int64))
        return module

    def on_fit_start(self):
        if self.vae is not None:
            self.vae.to(self.device)

    def training_step(self, batch, batch_idx):
        _, loss = self.model(batch["x"], start=batch["start"], targets=batch["y"], **self._inputs(batch))
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch["x"]))
        return loss

    def _inputs(self, batch) -> dict:
        """What the model reads besides the window: label prompts, and the whole sequence for prev_frames GPTs."""
        cfg = self.hparams.model_config
        kw = {"y": batch["labels"]} if "labels" in batch and cfg.get("num_classes") else {}
        if cfg.get("prev_frames"):
            kw["history"] = batch["seq"]
        if cfg.get("read_ink"):
            kw["ink"] = batch["ink"]
        return kw

    def validation_step(self, batch, batch_idx):
        _, loss = self.model(batch["x"], start=batch["start"], targets=batch["y"], **self._inputs(batch))
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch["x"]))

    # ------------------------------------------------------------------------------ sample
    def token_sampling(self, o=None) -> TokenSampling:
        """How to draw: the settings `o` (a minisora.generate.Sampling) gives, the checkpoint's recipe defaults (its
        training run's --temperature, --top_k, --top_p, --cfg_scale, --ink_temperature) for those it leaves None.
        top_k 0 and top_p 1 turn them off."""
        from minisora.generate import chosen

        h = self.hparams
        top_p = chosen(o, "top_p", h.top_p)
        ink = chosen(o, "ink_temperature", h.get("ink_temperature"))
        if ink is not None and ink < 0:
            raise ValueError(f"ink_temperature must be >= 0, got {ink}")
        return TokenSampling(chosen(o, "temperature", h.temperature), chosen(o, "top_k", h.top_k) or None,
                             top_p if top_p is not None and top_p < 1 else None,
                             chosen(o, "cfg_scale", h.get("cfg_scale", 1.0)), ink)

    @torch.no_grad()
    def sample_codes(self, n: int, prompt_codes: torch.Tensor | None = None, seed: int = 0,
                     opts: TokenSampling | None = None, y: torch.Tensor | None = None, use_cache: bool = True,
                     num_frames: int | None = None) -> torch.Tensor:
        """Generate code grids (n, t, h, w), drawn as `opts` says (None: the checkpoint's recipe). prompt_codes
        (n, t0, h, w): continue real first frames; y (n, num_classes): label prompts (None: the null label);
        num_frames: stop after that many latent frames (the first frames of the same draw)."""
        h, grid = self.hparams, tuple(self.hparams.grid)
        opts = opts or self.token_sampling()
        frames = grid[0] if num_frames is None else num_frames
        if not 0 < frames <= grid[0]:
            raise ValueError(f"num_frames must be in 1..{grid[0]} (the model's latent frames), got {num_frames}")
        bos = torch.full((n, 1), h.n_codes, dtype=torch.long, device=self.device)
        prompt = bos if prompt_codes is None else torch.cat([bos, prompt_codes.reshape(n, -1).long().to(self.device)], 1)
        total = frames * grid[1] * grid[2] + 1
        if prompt.shape[1] > total:
            raise ValueError(f"the prompt holds more than num_frames={frames} latent frames")
        g = torch.Generator(device=self.device).manual_seed(seed)
        was = self.model.training
        self.model.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            seq = self.model.generate(prompt, total - prompt.shape[1], opts, None if y is None else y.to(self.device),
                                      g, use_cache, self._processors(), self._reader(), self._background(opts))
        self.model.train(was)
        return seq[:, 1:].reshape(n, frames, *grid[1:])

    def _processors(self) -> tuple:
        """Which tokens may be drawn: the codes (not BOS); motion tokenizers: codes in the first frame, motion after."""
        vae = self.vae.config if self.vae is not None else {}
        if vae.get("motion_radius"):
            return (token_ranges(self.hparams.grid, vae["n_codes"], self.hparams.n_codes),)
        return (below(self.hparams.n_codes),)

    def _reader(self):
        """read_ink models: a fresh InkTracker for one sampled batch (the ink of the frames drawn so far)."""
        if not self.hparams.model_config.get("read_ink"):
            return None
        if self.vae is None:
            raise ValueError("a GPT with read_ink samples with its tokenizer (it reads its decoded frames): set .vae")
        tracker = InkTracker(self.vae.module, self.hparams.grid)
        return lambda seq: {"ink": tracker(seq)}

    def _background(self, opts: TokenSampling):
        """The (V,) mask of background codes that a digit-code temperature needs (recorded at training)."""
        if opts.ink_temperature is None:
            return None
        codes = self.hparams.get("background_codes")
        if codes is None:
            raise ValueError("--ink_temperature needs the checkpoint's background codes, which token models record "
                             "when they are trained (this checkpoint is older): retrain it, or sample without the flag")
        mask = torch.zeros(self.hparams.n_codes + 1, dtype=torch.bool, device=self.device)
        mask[torch.as_tensor(codes, dtype=torch.long, device=self.device)] = True
        return mask

    @torch.no_grad()
    def label_log_likelihood(self, seq: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """(B,) log-likelihood of sequences [BOS, c_0, ...] (B, L <= block_size + 1) under label prompts y
        (B, classes) multi-hot (None: the null label), read in one teacher-forced window from the clip's start."""
        kw = {"history": seq} if self.hparams.model_config.get("prev_frames") else {}
        reader = self._reader()
        if reader is not None:
            kw.update(reader(seq))
        logits = self.model(seq[:, :-1], start=0, y=y, **kw)[0].float()
        return logits.log_softmax(-1).gather(-1, seq[:, 1:, None])[..., 0].sum(1)

    @torch.no_grad()
    def single_label_log_likelihoods(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, num_classes): label_log_likelihood of each sequence under every single-class label {c}."""
        nc = int(self.hparams.model_config.get("num_classes") or 0)
        if not nc:
            raise ValueError("reading labels needs a class-conditional model")
        eye = torch.eye(nc, device=seq.device)
        return torch.stack([self.label_log_likelihood(seq, eye[c].expand(len(seq), -1)) for c in range(nc)], 1)

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
                                  "n_codes": h.n_codes, "grid": list(h.grid), "vae": h.vae_reference,
                                  "label_prior": h.get("label_prior")}
