"""The whole MiniSora pipeline at CPU-small scale, one stage after another (~42 min on 2 CPU cores with native bf16,
~2.6 h without: the recipes' step budgets; README "Quickstart"):

  1. generate Flying MNIST (64², 16 frames, 1-2 digits)            -> data/flying_mnist_demo/
  2. train a KL-VAE (4x4x4, 8 channels, chroma-weighted loss)      -> runs/train_vqvae/demo_vae/
  3. encode the train split into latents (+ decode check)          -> data/latents/flying_mnist_demo__demo_vae_latents_16frames_train.npy
  4. train a digit-conditioned ST-DiT with rectified flow          -> runs/iddpm/demo_dit/
  5. sample videos prompted with val videos' digits (Euler, CFG)   -> runs/demo/samples/grid.gif
  6. evaluate samples and VAE reconstructions against real videos  -> runs/demo/results.json
  (--with_gpt adds a per-frame VQ-VAE warm-started from the KL-VAE, 4096 more videos tokenized for a
   digit-conditioned GPT -- it memorises 1024 -- that reads earlier frames around each cell, the GPT, sampled
   (digits drawn from the training data's -> runs/demo/gpt_samples/grid.gif), prompted, continued and evaluated)

    bash train.sh python demo.py                   # the recipes' step budgets (recipes/*.args)
    bash train.sh python demo.py --minutes 10      # a time budget instead (quality then depends on the machine)

A re-run skips the stages that finished and resumes an interrupted training run from its last.ckpt.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from minisora.cli import RECIPES, Parser, recipe

ROOT = Path(__file__).resolve().parent


WORK = ROOT


def run(stage: str, cmd: list, output: Path, resumable: bool = False) -> None:
    """Run one stage unless it finished before. A stage counts as finished when it exited cleanly (a marker in
    runs/demo/stages/), not when its output exists: a training run killed half-way has a last.ckpt
    already, and is resumed from it (Lightning restores weights, optimizer, step and the --max_time clock)."""
    marker = WORK / "runs" / "demo" / "stages" / (re.sub(r"[^\w]+", "_", stage).strip("_") + ".done")
    if marker.exists() and output.exists():
        print(f"[demo] {stage}: already done ({output}), skipping", flush=True)
        return
    cmd = [str(c) for c in cmd]
    if resumable and output.exists():
        cmd += ["--resume_from", str(output)]
        print(f"[demo] {stage}: resuming the interrupted run from {output}", flush=True)
    print(f"\n[demo] {stage}: python {' '.join(cmd)}", flush=True)
    t = time.time()
    subprocess.run([sys.executable, str(ROOT / cmd[0]), *cmd[1:]], cwd=WORK, check=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{' '.join(cmd)}\n")
    print(f"[demo] {stage}: done in {time.time() - t:.0f}s", flush=True)


def hms(minutes: float) -> str:
    s = int(minutes * 60)
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def val_prompts(data: Path, n: int) -> list[str]:
    """The digit sets of the first n val videos, as sample.py --prompts arguments ("3,7")."""
    import json
    rows = [json.loads(line) for line in open(data / "val" / "metadata.jsonl")]
    return [",".join(str(d) for d in sorted(r["labels"])) for r in sorted(rows, key=lambda r: r["file"])[:n]]


# The recipes live in recipes/*.args (one file per stage; the README's commands and the tests read the same files),
# step budgets included: the same command gives the same models on every machine, only the time differs.


def at(name: str) -> str:
    """`@recipes/<name>.args` as an absolute path (stages run in --workdir): every script reads flags from it."""
    recipe(name)  # exists (FileNotFoundError naming the known recipes otherwise)
    return f"@{RECIPES / name}.args"


def recipe_value(name: str, flag: str) -> str:
    """The value a recipe gives `flag` (e.g. the GPT's --cfg_scale, which its continuations are prompted with)."""
    args = recipe(name)
    return args[args.index(flag) + 1]


TABLE = [("legibility", "legible / detected", ".3f"), ("legible_per_frame", "legible / frame", ".2f"),
         ("digits_per_frame", "digits / frame", ".2f"), ("chroma", "chroma", ".1f"), ("hue_spread", "hue spread", ".2f"),
         ("mean_speed_px", "speed px/frame", ".2f"), ("motion_residual_px", "motion residual px", ".2f"),
         ("identity_switch_rate", "identity switches", ".3f"), ("prompt_accuracy", "prompt accuracy", ".2f"),
         ("colour_error", "colour error", ".1f"), ("PSNR", "PSNR dB", ".2f"), ("FMD", "FMD", ".1f")]


def results_table(rows: list[tuple[str, str, dict]]) -> str:
    """Markdown table of evaluate.py results: (model, set, metrics) rows, the metrics in TABLE order."""
    lines = ["| model | set | " + " | ".join(h for _, h, _ in TABLE) + " |", "|---|---|" + "---|" * len(TABLE)]
    for model, label, r in rows:
        cells = [format(r[k], f) if isinstance(r.get(k), (int, float)) else "–" for k, _, f in TABLE]
        if "FMD_floor" in r and isinstance(r.get("FMD"), (int, float)):
            cells[-1] += f" (floor {r['FMD_floor']:.1f})"
        lines.append(f"| {model} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = Parser(__doc__)
    p.add_argument("--name", default="flying_mnist_demo", help="dataset name under data/")
    p.add_argument("--num_train", type=int, default=1024)
    p.add_argument("--num_val", type=int, default=64)
    p.add_argument("--minutes", type=float, default=None,
                   help="override the recipes' step budgets with a time budget: 14/38 of it to each VAE, the rest to "
                        "each generator (quality then depends on the machine)")
    p.add_argument("--with_gpt", action="store_true", help="also train a VQ-VAE and a GPT on its tokens")
    p.add_argument("--gpt_videos", type=int, default=4096,
                   help="--with_gpt: train videos tokenized for the GPT (data/<name>_gpt; ~4.5 min to tokenize 4096 on "
                        "2 cores with AMX)")
    p.add_argument("--num_videos", type=int, default=8, help="videos to sample (prompted with the first val videos' digits)")
    p.add_argument("--eval_videos", type=int, default=256, help="videos sampled for evaluation (FMD sample size)")
    p.add_argument("--workdir", default=str(ROOT), help="where data/ and runs/ go (default: the repo)")
    p.add_argument("--tiny", action="store_true",
                   help="smallest models, a few steps per stage (for tests: checks the plumbing in ~2 min, not quality)")
    return p.parse_args(argv)


class Demo:
    """The demo's paths and budgets; one method per part of the pipeline."""

    def __init__(self, a):
        self.a = a
        self.data, self.runs, self.out = WORK / "data" / a.name, WORK / "runs", WORK / "runs" / "demo"
        # --minutes: time budgets instead of the recipes' steps (each VAE gets 14/38, each generator the rest)
        self.vae_budget = self.time_budget(14 / 38)
        self.gen_budget = self.time_budget(24 / 38)
        self.clips = ["--resolution", 64, "--sequence_length", 16, "--num_workers", 1]
        self.tiny_vae = ["--channels", 8, 8, 8, "--max_steps", 3, "--log_videos_every", 0, "--log_every", 1] if a.tiny else []
        self.vae = self.runs / "train_vqvae/demo_vae/checkpoints/last.ckpt"
        self.dit = self.runs / "iddpm/demo_dit/checkpoints/last.ckpt"
        self.gpt = self.runs / "train_latent_nanogpt/demo_gpt/checkpoints/last.ckpt"
        self.latents = WORK / f"data/latents/{a.name}__demo_vae_latents_16frames_train.npy"
        self.prompts = []

    def time_budget(self, share: float) -> list:
        """Training flags of --minutes (after a recipe: they override its --max_steps), or none."""
        if self.a.minutes is None:
            return []
        return ["--max_steps", 10**7, "--max_time", hms(self.a.minutes * share)]

    def diffusion(self):
        a, common = self.a, ["--dataset", self.a.name, *self.clips]
        tiny_dit = ["--depth", 1, "--hidden_size", 32, "--num_heads", 2, "--max_steps", 3, "--log_every", 1] if a.tiny else []
        run("1/6 data", ["generate_flying_mnist.py", at("data"), "--name", a.name, "--num_train", a.num_train,
                         "--num_val", a.num_val], self.data / "val" / "metadata.jsonl")
        run("2/6 KL-VAE", ["train_vqvae.py", at("vae"), *common, *self.vae_budget, "--run_name", "demo_vae",
                           "--log_every_n_steps", 20, *self.tiny_vae], self.vae, resumable=True)
        run("3/6 latents", ["latents.py", *common, "--vae", self.vae, "--batch_size", 16, "--decode", 4], self.latents)
        run("4/6 diffusion", ["iddpm.py", at("dit"), "--latents_input_file", self.latents, "--vae", self.vae,
                              *self.gen_budget, "--sample_every", 0, "--checkpoint_every", 500, "--log_every", 20, "--num_workers", 1,
                              "--run_name", "demo_dit", *tiny_dit], self.dit, resumable=True)
        self.prompts = val_prompts(self.data, a.num_videos)
        run("5/6 sample", ["sample.py", "--checkpoint", self.dit, "--num_videos", a.num_videos, "--prompts", *self.prompts,
                           "--output_dir", self.out / "samples"], self.out / "samples" / "grid.gif")

    def token_path(self):
        """A per-frame VQ tokenizer warm-started from the KL-VAE (it inherits the colour the KL-VAE learned), more
        videos tokenized (the GPT memorises 1,024 clips; videos are free), the GPT, and its samples nobody prompted:
        each video's digits drawn from the training data's, then guided (as RCG)."""
        a = self.a
        tiny_gpt = ["--n_layer", 1, "--n_head", 2, "--n_embd", 32, "--max_iters", 3, "--eval_interval", 2,
                    "--log_every", 1] if a.tiny else []
        vq = self.runs / "train_vqvae/demo_vq/checkpoints/last.ckpt"
        run("+ VQ-VAE", ["train_vqvae.py", at("tokenizer"), "--dataset", a.name, *self.clips, "--init_from", self.vae,
                         *self.vae_budget, "--run_name", "demo_vq", *self.tiny_vae],
            vq, resumable=True)
        gpt_data = f"{a.name}_gpt"  # the same generator and seed: the demo's train videos are its first 1024
        run("+ GPT data", ["generate_flying_mnist.py", at("data"), "--name", gpt_data, "--num_train", a.gpt_videos,
                           "--num_val", 1], WORK / "data" / gpt_data / "val" / "metadata.jsonl")
        tokens = WORK / f"data/latents/{gpt_data}__demo_vq_tokens_16frames_train.npy"
        run("+ tokens", ["tokenize_videos.py", at("tokens"), "--dataset", gpt_data, *self.clips, "--vae", vq,
                         "--batch_size", 16, "--decode", 2], tokens)
        run("+ GPT", ["train_latent_nanogpt.py", at("gpt"), "--tokens_input_file", tokens, *self.gen_budget,
                      "--eval_interval", 200, "--eval_iters", 4,
                      "--sample_interval", 0, "--num_workers", 1, "--run_name", "demo_gpt", *tiny_gpt], self.gpt,
            resumable=True)
        run("+ GPT samples", ["sample.py", "--checkpoint", self.gpt, "--num_videos", a.num_videos, "--prior_labels",
                              "--output_dir", self.out / "gpt_samples"], self.out / "gpt_samples" / "grid.gif")

    def evaluate(self) -> list[tuple[str, Path]]:
        """evaluate.py on each generator with its recipe's sampling settings (kept in its checkpoint)."""
        a = self.a
        n_eval = 8 if a.tiny else a.eval_videos
        evals = [("ST-DiT (rf)", self.out / "results.json", ["--checkpoint", self.dit, "--prompted", "--vae", self.vae])]
        if a.with_gpt:  # samples nobody prompted (null label, and --prior_labels), prompted, and continued
            evals.append(("GPT", self.out / "results_gpt.json", [
                "--checkpoint", self.gpt, "--continuation", 4, "--prompted", "--prior_labels",
                "--continuation_cfg", recipe_value("gpt", "--cfg_scale")]))
        for label, res, args in evals:
            run(f"6/6 evaluate {label}", ["evaluate.py", "--dataset", a.name, "--num_fmd", n_eval, "--num_videos", n_eval,
                                          *args, "--output", res, *(["--feature_steps", 10] if a.tiny else [])], res)
        return [(label, res) for label, res, _ in evals]

    def report(self, evals, t0: float):
        print("\n[demo] results (real rows: the target; FMD: lower is better, its floor is real vs real at the same size):")
        print(results_table(table_rows(evals)))
        print(f"\n[demo] finished in {(time.time() - t0) / 60:.1f} min. Outputs:\n"
              f"  videos:          {self.data}/{{train,val}}/*.mp4 (+ metadata.jsonl)\n"
              f"  VAE:             {self.vae}  (recon samples: {self.vae.parent.parent / 'samples'})\n"
              f"  latents:         {self.latents} (+ .json sidecar; decoded check: "
              f"{self.latents.with_name(self.latents.stem + '_decoded')})\n"
              f"  diffusion model: {self.dit}\n"
              f"  samples:         {self.out / 'samples'}/grid.gif, grid.mp4, 000.mp4 ... (prompts: {' '.join(self.prompts)})\n"
              f"  evaluation:      {self.out / 'results.json'}")
        if self.a.with_gpt:
            print(f"  GPT samples:     {self.out / 'gpt_samples'}/grid.gif (digits drawn from the training data's)\n"
                  f"  GPT continuations (first 4 frames given, prompted with their digits): "
                  f"{WORK / 'runs/evaluate/continuation_demo_gpt.gif'}")


def table_rows(evals) -> list[tuple[str, str, dict]]:
    """(model, set, metrics) rows of evaluate.py's results files; the real rows and controls once."""
    import json
    rows, seen_real = [], False
    for label, res in evals:
        for k, r in json.loads(res.read_text())["results"].items():
            if k.startswith("real") or k == "noise":  # the target and the controls, once
                if not seen_real:
                    rows.append(("real videos" if k.startswith("real") else "control", k, r))
            else:
                rows.append((label if k != "vae reconstruction" else "VAE", k, r))
        seen_real = True
    return rows


def main(argv=None):
    a = parse_args(argv)
    global WORK
    WORK = Path(a.workdir).resolve()
    t0 = time.time()
    demo = Demo(a)
    demo.diffusion()
    if a.with_gpt:
        demo.token_path()
    demo.report(demo.evaluate(), t0)


if __name__ == "__main__":
    main()
