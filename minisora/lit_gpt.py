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


class InkTracker:
    """GPT.generate's ink_fn for a GPT with read_ink: called with the sequence so far [BOS, tokens...] (B, L), it
    decodes each latent frame once, when the frame is complete (VideoVAE.next_frame: the first frame's codes, then
    each frame the one before moved by its motion tokens), and returns the ink map (B, t h w) float 0/1 of the
    decoded frames (models.vqvae.cell_ink; frames not yet complete: 0) -- what training read from ink_maps."""

    def __init__(self, vae_module, grid):
        self.vae, self.grid = vae_module, tuple(grid)
        self.device = next(vae_module.parameters()).device
        self.done, self.frame, self.ink = 0, None, None

    @torch.no_grad()
    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
        from models.vqvae import cell_ink

        t, h, w = self.grid
        complete = min(t, (seq.shape[1] - 1) // (h * w))
        if self.ink is None or self.ink.shape[0] != seq.shape[0] or complete < self.done:  # a new sequence
            self.done, self.frame = 0, None
            self.ink = torch.zeros(seq.shape[0], t * h * w, device=seq.device)
        with torch.autocast(seq.device.type, enabled=False):  # the same frames as decode_codes / ink_maps
            for f in range(self.done, complete):
                tokens = seq[:, 1 + f * h * w:1 + (f + 1) * h * w].reshape(-1, h, w).to(self.device)
                self.frame = self.vae.next_frame(self.frame, tokens)
                ink = cell_ink(self.frame, self.vae.config.spatial_stride)
                self.ink[:, f * h * w:(f + 1) * h * w] = ink.flatten(1).to(self.ink)
        self.done = complete
        return self.ink


@torch.no_grad()
def ink_maps(tokens, vae, batch_size: int = 64):
    """(N, t h w) uint8: which cells of each clip's decoded frames hold ink (models.vqvae.cell_ink), for the
    motion tokens `tokens` (N, t, h, w) of the tokenizer `vae` (a VAEHandle): what a GPT with read_ink reads."""
    import numpy as np

    if not vae.config.get("motion_radius"):
        raise ValueError("ink maps read the decoded frames of motion tokens (tokenize_videos.py --motion_tokens); "
                         f"{vae.reference} codes every frame")
    out = np.zeros((len(tokens), int(np.prod(tokens.shape[1:]))), dtype=np.uint8)
    for i in range(0, len(tokens), batch_size):
        c = torch.from_numpy(np.asarray(tokens[i:i + batch_size]).astype(np.int64)).to(vae.device).flatten(1)
        seq = torch.cat([c.new_zeros(len(c), 1), c], 1)  # [BOS, tokens]: the sequence a sampler tracks
        out[i:i + len(c)] = InkTracker(vae.module, tokens.shape[1:])(seq).cpu().numpy()
    return out


class LitLM(L.LightningModule):
    checkpoints = dict(filename="best", monitor="val/loss", mode="min", save_top_k=1)  # kept: the best val/loss
    # hyperparameters a checkpoint hands to sampling (minisora.generate.load_generator)
    SAMPLING_DEFAULTS = ("temperature", "top_k", "top_p", "later_temperature", "ink_temperature", "background_codes")

    def __init__(self, kind: str, model_config: dict, n_codes: int, grid: list, vae_reference: str,
                 learning_rate: float = 5e-4, min_lr: float = 1e-4, warmup_iters: int = 100, lr_decay_iters: int = 5000,
                 beta2: float = 0.99, weight_decay: float = 0.1, sample_dir: str | None = None,
                 temperature: float = 1.0, top_k: int | None = 100, top_p: float | None = None, num_samples: int = 1,
                 prompt_frames: int = 0, later_temperature: float | None = None, ink_temperature: float | None = None,
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
                     a.num_samples, a.prompt_frames, a.later_temperature, a.ink_temperature,
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

    def ink_fn(self) -> InkTracker | None:
        """A fresh InkTracker for one sampled batch of a read_ink model (None for the others)."""
        if not self.hparams.model_config.get("read_ink"):
            return None
        if self.vae is None:
            raise ValueError("a GPT with read_ink samples with its tokenizer (it reads its decoded frames): set .vae")
        return InkTracker(self.vae.module, self.hparams.grid)

    def validation_step(self, batch, batch_idx):
        _, loss = self.model(batch["x"], start=batch["start"], targets=batch["y"], **self._inputs(batch))
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch["x"]))

    # ------------------------------------------------------------------------------ sample
    @torch.no_grad()
    def sample_codes(self, n: int, prompt_codes: torch.Tensor | None = None, seed: int = 0, use_cache: bool = True,
                     temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                     y: torch.Tensor | None = None, cfg_scale: float = 1.0,
                     later_temperature: float | None = None, first_frame_candidates: int = 1,
                     ink_temperature: float | None = None, guide=None, guide_scale: float = 1.0,
                     num_frames: int | None = None) -> torch.Tensor:
        """Generate whole code grids (n, t, h, w). prompt_codes (n, t0, h, w): continue real first frames;
        num_frames: stop after that many latent frames (n, num_frames, h, w), the first frames of the same draw
        (bench/bench_first_frame.py draws only the first).
        temperature / top_k / top_p: None = the values the model was trained with (its hparams); top_k 0 and
        top_p 1 turn them off, temperature 0 is greedy. y (n, num_classes): label prompts (class-conditional
        GPT; None: the null label), cfg_scale: classifier-free guidance on the logits; later_temperature: the
        temperature of the codes after the first latent frame (None: `temperature`); first_frame_candidates K > 1
        (class-conditional models, when the first frame is drawn, not given): draw K first latent frames per video
        and keep the one the model itself reads as most digit-like (`pick_first_frames`), then draw the rest;
        ink_temperature: the temperature of the digit codes only (None: the trained default; see `ink`); guide (a
        weaker GPT of the same run: minisora.generate.load_guide) with guide_scale != 1: autoguidance (GPT.generate)."""
        h = self.hparams
        if guide_scale != 1.0 and guide is None:
            raise ValueError("guide_scale needs a guide model (--guide_checkpoint: an earlier checkpoint of the run)")
        auto = dict(guide_model=guide, guide_scale=guide_scale) if guide is not None and guide_scale != 1.0 else {}
        temperature = h.temperature if temperature is None else temperature
        if later_temperature is None:  # the trained default (checkpoints from before the flag: one temperature)
            later_temperature = h.get("later_temperature")
        ink = self.ink(ink_temperature)
        top_k = h.top_k if top_k is None else (top_k or None)
        top_p = h.top_p if top_p is None else (top_p if top_p < 1 else None)
        grid = tuple(h.grid)
        # motion tokenizers (models.vqvae): codes in the first latent frame, motion tokens after it
        vcfg = self.vae.config if self.vae is not None else {}
        split = vcfg["n_codes"] if vcfg.get("motion_radius") else None
        bos = torch.full((n, 1), h.n_codes, dtype=torch.long, device=self.device)
        prompt = bos if prompt_codes is None else torch.cat([bos, prompt_codes.reshape(n, -1).long().to(self.device)], 1)
        frames = grid[0] if num_frames is None else num_frames
        if not 0 < frames <= grid[0]:
            raise ValueError(f"num_frames must be in 1..{grid[0]} (the model's latent frames), got {num_frames}")
        total = frames * grid[1] * grid[2] + 1
        if prompt.shape[1] > total:
            raise ValueError(f"the prompt holds more than num_frames={frames} latent frames")
        g = torch.Generator(device=self.device).manual_seed(seed)
        was = self.model.training
        self.model.eval()
        y = None if y is None else y.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            def draw(start, new, labels):
                kw = dict(y=labels, cfg_scale=cfg_scale) if labels is not None else {}
                tracker = self.ink_fn()  # read_ink models: the ink of the frames drawn so far
                if tracker is not None:
                    kw["ink_fn"] = tracker
                return self.model.generate(start, new, temperature, top_k, top_p, use_cache=use_cache, allowed=h.n_codes,
                                           first_frame_tokens=split, generator=g, later_temperature=later_temperature, **ink, **auto, **kw)
            if first_frame_candidates > 1 and prompt_codes is None:
                self._scoring_classes()  # before drawing anything
                k, frame = first_frame_candidates, grid[1] * grid[2]
                yk = None if y is None else y.repeat_interleave(k, 0)
                cands = draw(prompt.repeat_interleave(k, 0), frame, yk)  # (n k, 1 + frame): BOS + a first frame
                prompt = self.pick_first_frames(cands.view(n, k, -1), y)
            seq = draw(prompt, total - prompt.shape[1], y)
        self.model.train(was)
        return seq[:, 1:].reshape(n, frames, *grid[1:])

    def ink(self, ink_temperature: float | None) -> dict:
        """generate() keywords of the digit-code temperature (None: the trained default): the temperature and the
        background-code mask it needs (recorded when the model was trained: `background_codes`)."""
        h = self.hparams
        t = h.get("ink_temperature") if ink_temperature is None else ink_temperature
        if t is None:
            return {}
        if t < 0:
            raise ValueError(f"ink_temperature must be >= 0, got {t}")
        if h.get("background_codes") is None:
            raise ValueError("--ink_temperature needs the checkpoint's background codes, which token models record "
                             "when they are trained (this checkpoint is older): retrain it, or sample without the flag")
        mask = torch.zeros(h.n_codes + 1, dtype=torch.bool, device=self.device)
        mask[torch.as_tensor(h.background_codes, dtype=torch.long, device=self.device)] = True
        return dict(ink_temperature=t, background=mask)

    @torch.no_grad()
    def label_log_likelihood(self, seq: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """(B,) log-likelihood of sequences [BOS, c_0, ...] (B, L <= block_size + 1) under label prompts y
        (B, classes) multi-hot (None: the null label), read in one teacher-forced window from the clip's start."""
        kw = {"history": seq} if self.hparams.model_config.get("prev_frames") else {}
        tracker = self.ink_fn()
        if tracker is not None:
            kw["ink"] = tracker(seq)
        logits = self.model(seq[:, :-1], start=0, y=y, **kw)[0].float()
        return logits.log_softmax(-1).gather(-1, seq[:, 1:, None])[..., 0].sum(1)

    @torch.no_grad()
    def single_label_log_likelihoods(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, num_classes): label_log_likelihood of each sequence under every single-class label {c}."""
        nc = self._scoring_classes()
        eye = torch.eye(nc, device=seq.device)
        return torch.stack([self.label_log_likelihood(seq, eye[c].expand(len(seq), -1)) for c in range(nc)], 1)

    def _scoring_classes(self) -> int:
        nc = int(self.hparams.model_config.get("num_classes") or 0)
        if not nc:
            raise ValueError("first_frame_candidates needs a class-conditional model (its labels score the frames)")
        return nc

    @torch.no_grad()
    def pick_first_frames(self, cands: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """cands (n, K, 1 + frame): K drawn first frames per video -> (n, 1 + frame), the one per video that the
        model's implicit classifier (what classifier-free guidance amplifies) scores highest: log p(x | labels) -
        log p(x | no label), with the video's prompt y, or without one, the best single digit (does the frame look
        like any digit to the model). The model scores its own draws: no external classifier is involved."""
        self._scoring_classes()
        n, k, length = cands.shape
        block = getattr(self.model.config, "block_size", None)
        if block is not None and length - 1 > block:
            raise ValueError(f"first_frame_candidates: a first frame of {length - 1} codes does not fit the model's "
                             f"window of {block} tokens")
        flat = cands.reshape(n * k, length)
        null = self.label_log_likelihood(flat, None)  # the model's own null label (ClassConditioned.condition)
        if y is not None:
            score = self.label_log_likelihood(flat, y.float().repeat_interleave(k, 0)) - null
        else:
            score = self.single_label_log_likelihoods(flat).amax(1) - null
        best = score.view(n, k).argmax(1)
        return cands[torch.arange(n, device=cands.device), best]

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
