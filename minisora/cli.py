"""The command-line flag groups shared by the training scripts, each declared once.

Every trainer (train_vqvae.py, train_dit.py, iddpm.py, train_latent_*.py) takes `add_run_args` (data folder,
run folder, hardware, wandb) and `add_loop_args` (steps, time, optimiser, logging, checkpoints); the upstream
spellings of a flag are aliases of one name (e.g. --max_iters / --max_train_steps -> max_steps), so the
training driver (minisora.training.fit) reads the same attributes from every script. A script changes
only defaults (`p.set_defaults`). Model-family groups: `add_diffusion_args`, `add_lm_args`.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


class Parser(argparse.ArgumentParser):
    """Every script's parser: no abbreviations, the docstring kept as written, and flags read from files with
    `@file` (e.g. `python train_vqvae.py @recipes/vae.args --dataset ...`): a recipe file holds flags as on a
    command line, several per line, `#` starts a comment. Flags after `@file` override it."""

    def __init__(self, description: str | None = None, **kw):
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(description=description, allow_abbrev=False, fromfile_prefix_chars="@", **kw)

    def convert_arg_line_to_args(self, line: str) -> list[str]:
        return shlex.split(line, comments=True)


def recipe(name: str) -> list[str]:
    """The flags of recipes/<name>.args, as a command line (what `@recipes/<name>.args` expands to)."""
    path = RECIPES / f"{name}.args"
    if not path.exists():
        known = ", ".join(sorted(f.stem for f in RECIPES.glob("*.args")))
        raise FileNotFoundError(f"no recipe {name!r} ({path}); known: {known}")
    return [arg for line in path.read_text().splitlines() for arg in shlex.split(line, comments=True)]


VAE_HELP = ("VAE: a MiniSora checkpoint (file or run folder), a wandb artifact (entity/project/name:vN) or a Hugging "
            "Face AutoencoderKL id/folder. Default: the VAE named in the input stage file's sidecar, else the newest "
            "checkpoint under runs/train_vqvae/ that fits (said which)")


def add_vae_arg(p, help: str = VAE_HELP, default: str | None = None) -> None:
    """The one VAE flag: --vae (upstream also spelled it --vae_model and --vae_model_name)."""
    p.add_argument("--vae", "--vae_model", "--vae_model_name", dest="vae", default=default, help=help)


def add_bad_video_arg(p, default: str) -> None:
    """--on_bad_video, the same in every stage that reads videos (training: skip; encoding: raise)."""
    p.add_argument("--on_bad_video", default=default, choices=["skip", "raise"],
                   help="corrupt, empty or too-short videos are all named up front (one line each), then left out "
                        f"(skip; a stage file's sidecar lists them under source.skipped) or the run stops (raise). "
                        f"Default: {default}")


def add_run_args(p: argparse.ArgumentParser, project: str) -> None:
    g = p.add_argument_group("run / hardware (every training script)")
    g.add_argument("--dataset", default="flying_mnist", help="reads data/<dataset>/{train,val} (or a folder path)")
    g.add_argument("--data_dir", default="data")
    add_bad_video_arg(g, default="skip")
    g.add_argument("--output_dir", "--log_dir", dest="output_dir", default="runs",
                   help="runs/<script>/<run_name>/ holds config, metrics, samples, checkpoints (--log_dir: upstream)")
    g.add_argument("--run_name", default=None,
                   help="default: a timestamp (a new folder), or with --resume_from the resumed run's folder")
    g.add_argument("--devices", "--gpus", dest="devices", default="auto",
                   help="'auto', a count, or a list like 0,1 (--gpus is upstream's alias); >1 uses DDP")
    g.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    g.add_argument("--num_nodes", type=int, default=1)
    g.add_argument("--precision", default=None,
                   help="Lightning precision (32-true | bf16-mixed | 16-mixed); default bf16-mixed where the GPU or CPU "
                        "has native bf16, else 32-true")
    g.add_argument("--num_workers", type=int, default=2, help="DataLoader workers per process")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--resume_from", "--resume_from_checkpoint", dest="resume_from", default=None,
                   help="checkpoint to resume (local path, run folder or wandb artifact); its metrics.csv history is kept")
    g.add_argument("--track", "--wandb_log", dest="track", action="store_true", help="log to wandb (--wandb_log is an alias)")
    g.add_argument("--project", default=project, help=f"wandb project (default {project})")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")


def add_loop_args(p: argparse.ArgumentParser, warmup: bool = True, samples: bool = True) -> None:
    """Steps, time, optimiser and logging flags of every trainer (defaults: set per script)."""
    t = p.add_argument_group("training loop (every training script; upstream spellings are aliases)")
    t.add_argument("--epochs", type=int, default=-1, help="stop after this many epochs (-1: steps or time decide)")
    t.add_argument("--max_steps", "--max_train_steps", "--max_iters", dest="max_steps", type=int, default=-1,
                   help="stop after this many optimizer steps (-1: epochs decide)")
    t.add_argument("--max_time", default=None, help="stop after this wall time, DD:HH:MM:SS (e.g. 00:00:15:00)")
    t.add_argument("--batch_size", type=int, default=2)
    t.add_argument("--lr", "--learning_rate", dest="lr", type=float, default=1e-4, help="peak learning rate")
    if warmup:
        t.add_argument("--warmup_steps", "--lr_warmup_steps", "--warmup_iters", dest="warmup_steps", type=int, default=0,
                       help="linear learning-rate warm-up (optimizer steps)")
    t.add_argument("--accumulate_grad_batches", "--gradient_accumulation_steps", dest="accumulate_grad_batches", type=int,
                   default=1, help="batches per optimizer step")
    t.add_argument("--clip_grad", "--clip_max_norm", "--grad_clip", dest="clip_grad", type=float, default=1.0,
                   help="global grad-norm clip (0: off)")
    t.add_argument("--start_clip_iter", type=int, default=0, help="clip only from this optimizer step on")
    t.add_argument("--log_every", "--log_every_n_steps", "--log_interval", dest="log_every", type=int, default=10,
                   help="optimizer steps between logged metrics")
    t.add_argument("--ckpt_every", "--checkpoint_every", dest="ckpt_every", type=int, default=1000,
                   help="optimizer steps between kept checkpoints (0: only last.ckpt); last.ckpt is also written "
                        "when training stops")
    if samples:
        t.add_argument("--sample_every", "--sample_interval", dest="sample_every", type=int, default=100,
                       help="optimizer steps between sampled videos in samples/ (0: only at the end)")
        t.add_argument("--num_samples", type=int, default=2, help="videos per periodic sample")


def add_diffusion_args(p: argparse.ArgumentParser, learn_sigma_default: bool) -> None:
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
    g.add_argument("--cfg_scale", type=float, default=1.0, help="classifier-free guidance scale of periodic samples "
                                                                "(class-conditional models)")
    g.add_argument("--grad_checkpointing", action="store_true", help="recompute activations in backward (less memory)")


def diffusion_settings(a, script: str, respace: int | None = None) -> dict:
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


def add_lm_args(p: argparse.ArgumentParser) -> None:
    """Data, model-size and sampling flags of the next-token scripts (nanoGPT's names)."""
    d = p.add_argument_group("data")
    d.add_argument("--tokens_input_file", default="data/latents/flying_mnist__model-kbu39ped_tokens_32frames_train.npy",
                   help="tokens .npy from tokenize_videos.py (rows = videos)")
    add_vae_arg(d, help="the VQ-VAE that made the tokens (decodes samples); default: the one named in the sidecar")
    d.add_argument("--val_fraction", type=float, default=0.05, help="last fraction of rows held out for val/loss")
    d.add_argument("--block_size", type=int, default=1024,
                   help="tokens per training window; = tokens per clip (e.g. 1024 for 4x16x16 codes): whole clips, every "
                        "token sees all before it. Shorter: random windows, and the sampler re-anchors a full window to "
                        "its last half, so a token may not see the previous latent frame")
    d.add_argument("--first_frame_windows", type=float, default=0.0,
                   help="fraction of training windows that begin a clip cut at a random latent frame ([BOS, frame k, "
                        "...]): more practice on the first frame, the one drawn from nothing, on every frame of the data")
    d.add_argument("--class_conditional", action="store_true",
                   help="GPT / Mamba: condition on the digits present (the tokens' source metadata), whole-prompt dropout 0.1 "
                        "for classifier-free guidance (sample.py --labels 3 7 --cfg_scale 2)")
    t = p.add_argument_group("evaluation and schedule (nanoGPT flags)")
    t.add_argument("--eval_interval", type=int, default=250, help="optimizer steps between val/loss evaluations")
    t.add_argument("--eval_iters", type=int, default=100, help="val batches per evaluation")
    t.add_argument("--dropout", type=float, default=0.2)
    t.add_argument("--lr_decay_iters", type=int, default=5000, help="cosine decay reaches --min_lr here")
    t.add_argument("--min_lr", type=float, default=1e-4)
    t.add_argument("--beta2", type=float, default=0.99)
    t.add_argument("--weight_decay", type=float, default=0.1)
    s = p.add_argument_group("sampling (periodic samples; kept in the checkpoint as the defaults of sample.py / "
                             "evaluate.py)")
    s.add_argument("--temperature", type=nonnegative_float, default=1.0, help="0: greedy")
    s.add_argument("--top_k", type=int, default=100, help="0: off")
    s.add_argument("--top_p", type=float, default=None)
    s.add_argument("--cfg_scale", type=float, default=1.0,
                   help="classifier-free guidance on the logits, with label prompts (--class_conditional)")
    s.add_argument("--ink_temperature", type=nonnegative_float, default=None,
                   help="temperature of the digit codes only: whether a cell is background keeps the model's odds at "
                        "--temperature, which digit code is drawn at this one (0: the most likely)")
    s.add_argument("--prompt_frames", type=int, default=1,
                   help="also continue a real val video from its first N latent frames (0: off)")
    add_loop_args(p)
    p.set_defaults(batch_size=32, lr=5e-4, warmup_steps=100, max_steps=50000, log_every=10, ckpt_every=0,
                   sample_every=2000, num_samples=1)


def nonnegative_float(text: str) -> float:
    """argparse type of temperatures that must be >= 0 (0: the most likely token)."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The sampling flags of sample.py / evaluate.py, for every generator. Unset: the checkpoint's recipe value."""
    g = p.add_argument_group("sampling (default: the checkpoint's recipe, what its training run was given)")
    g.add_argument("--sampler", default=None, choices=["dpm++", "ddim", "ddpm", "euler", "heun"],
                   help="diffusion: eps models dpm++ | ddim | ddpm; rf models euler | heun")
    g.add_argument("--steps", type=int, default=None, help="diffusion sampler steps (ddpm: respaced ancestral steps; "
                                                           "heun: 2 model calls per step)")
    g.add_argument("--no_ema", action="store_true", help="diffusion: the raw weights instead of the EMA ones")
    g.add_argument("--cfg_scale", type=float, default=None,
                   help="classifier-free guidance scale with label prompts (GPTs: on the logits; 1: none)")
    g.add_argument("--temperature", type=nonnegative_float, default=None, help="token models; 0 = greedy")
    g.add_argument("--top_k", type=int, default=None, help="token models; 0 = off")
    g.add_argument("--top_p", type=float, default=None, help="token models; 1 = off")
    g.add_argument("--ink_temperature", type=nonnegative_float, default=None,
                   help="token models: temperature of the digit codes only (whether a cell is background keeps the "
                        "model's odds)")


def sampling_options(a):
    """The minisora.generate.Sampling of add_sampling_args' flags."""
    from minisora.generate import Sampling

    return Sampling(a.sampler, a.steps, a.cfg_scale, a.temperature, a.top_k, a.top_p, a.ink_temperature,
                    use_ema=not a.no_ema)


def training_windows(a, vae) -> dict:
    """token_splits keyword arguments of the training-window flags of add_lm_args (every token script), and
    whether the tokens are motion tokens (`vae`, the tokens' resolved tokenizer, says)."""
    return dict(first_frame_windows=a.first_frame_windows, motion_tokens=bool(vae.config.get("motion_radius")))
