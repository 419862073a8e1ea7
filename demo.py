"""The whole MiniSora pipeline at CPU-small scale, one stage after another (~45 min on 2 CPU cores):

  1. generate Flying MNIST (64², 16 frames, 1-2 digits)            -> data/flying_mnist_demo/
  2. train a KL-VAE (4x4x4, 8 channels, chroma-weighted loss)      -> runs/train_vqvae/demo_vae/
  3. encode the train split into latents (+ decode check)          -> data/latents/flying_mnist_demo__demo_vae_latents_16frames_train.npy
  4. train a digit-conditioned ST-DiT with rectified flow          -> runs/iddpm/demo_dit/
  5. sample videos prompted with val videos' digits (Euler, CFG)   -> runs/demo/samples/grid.gif
  6. evaluate samples and VAE reconstructions against real videos  -> runs/demo/results.json
  (--with_gpt adds a per-frame VQ-VAE warm-started from the KL-VAE, 4096 more videos tokenized for a
   digit-conditioned GPT -- it memorises 1024 -- that reads earlier frames around each cell, the GPT, sampled
   (digits drawn from the training data's -> runs/demo/gpt_samples/grid.gif), prompted, continued and evaluated)

    bash train.sh python demo.py                   # or: python demo.py --minutes 10 (shorter training)

A re-run skips the stages that finished and resumes an interrupted training run from its last.ckpt.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

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


# The recipe (README "Recipe ablations" has the measurements behind each choice).
VAE_RECIPE = ["--network_variant", "vae_s4t4_m", "--embedding_dim", 8, "--chroma_weight", 4, "--kl_loss_weight", 1e-4,
              "--batch_size", 8, "--lr", 1e-3]
DIT_RECIPE = ["--objective", "rf", "--class_conditional", "--depth", 6, "--hidden_size", 192, "--num_heads", 6,
              "--patch_size", "1,2,2", "--batch_size", 8, "--lr", 5e-4, "--warmup_steps", 100, "--ema_decay", 0.999]
CFG_SCALE, SAMPLER, STEPS = 3.0, "euler", 25
GPT_RECIPE = ["--prev_frames", 2, "--same_frame", "--first_frame_windows", 0.3, "--ink_temperature", 0.3]
# The GPT trains for a time budget; its cosine learning-rate decay is sized to span that budget at the step rate
# of 2 AMX cores (~100 steps a minute for the 4 x 256 GPT): ended at 2,000 of 3,893 steps it left the second half
# at the floor and the run 0.025 nats per token worse (README, "A learning-rate decay that spans the run").
GPT_STEPS_PER_MINUTE = 100
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="flying_mnist_demo", help="dataset name under data/")
    p.add_argument("--num_train", type=int, default=1024)
    p.add_argument("--num_val", type=int, default=64)
    p.add_argument("--minutes", type=float, default=38, help="training budget: 14/38 to the VAE, the rest to the generator")
    p.add_argument("--with_gpt", action="store_true", help="also train a VQ-VAE and a GPT on its tokens")
    p.add_argument("--gpt_videos", type=int, default=4096,
                   help="--with_gpt: train videos tokenized for the GPT (data/<name>_gpt; ~4.5 min to tokenize 4096 on "
                        "2 cores with AMX)")
    p.add_argument("--num_videos", type=int, default=8, help="videos to sample (prompted with the first val videos' digits)")
    p.add_argument("--eval_videos", type=int, default=256, help="videos sampled for evaluation (FMD sample size)")
    p.add_argument("--workdir", default=str(ROOT), help="where data/ and runs/ go (default: the repo)")
    p.add_argument("--tiny", action="store_true",
                   help="smallest models, a few steps per stage (for tests: checks the plumbing in ~2 min, not quality)")
    a = p.parse_args(argv)
    global WORK
    WORK = Path(a.workdir).resolve()
    data, runs, out = WORK / "data" / a.name, WORK / "runs", WORK / "runs" / "demo"
    tiny_vae = ["--channels", 8, 8, 8, "--max_steps", 3, "--log_videos_every", 0, "--log_every", 1] if a.tiny else []
    tiny_dit = ["--depth", 1, "--hidden_size", 32, "--num_heads", 2, "--max_steps", 3, "--log_every", 1] if a.tiny else []
    tiny_gpt = ["--n_layer", 1, "--n_head", 2, "--n_embd", 32, "--max_iters", 3, "--eval_interval", 2,
                "--log_every", 1] if a.tiny else []
    vae_minutes = a.minutes * 14 / 38
    gen_minutes = a.minutes - vae_minutes  # each generator's budget (the DiT's, and the GPT's with --with_gpt)
    t0 = time.time()
    flying = ["generate_flying_mnist.py", "--resolution", 64, "--num_frames", 16, "--max_digits", 2,
              "--digit_size_min", 20, "--digit_size_max", 28, "--min_speed", 1, "--max_speed", 4]
    run("1/6 data", [*flying, "--name", a.name, "--num_train", a.num_train, "--num_val", a.num_val],
        data / "val" / "metadata.jsonl")
    clips = ["--resolution", 64, "--sequence_length", 16, "--num_workers", 1]
    common = ["--dataset", a.name, *clips]
    vae = runs / "train_vqvae/demo_vae/checkpoints/last.ckpt"
    run("2/6 KL-VAE", ["train_vqvae.py", *common, *VAE_RECIPE, "--epochs", 1000, "--max_time", hms(vae_minutes),
                       "--run_name", "demo_vae", "--log_every_n_steps", 20, *tiny_vae], vae, resumable=True)
    latents = WORK / f"data/latents/{a.name}__demo_vae_latents_16frames_train.npy"
    run("3/6 latents", ["latents.py", *common, "--vae", vae, "--batch_size", 16, "--decode", 4], latents)
    dit = runs / "iddpm/demo_dit/checkpoints/last.ckpt"
    run("4/6 diffusion", ["iddpm.py", "--latents_input_file", latents, "--vae", vae, "--latent_frames_to_generate", 4,
                          *DIT_RECIPE, "--max_steps", 100000, "--epochs", -1, "--max_time", hms(gen_minutes),
                          "--sample_every", 0, "--checkpoint_every", 500, "--log_every", 20, "--num_workers", 1,
                          "--run_name", "demo_dit", *tiny_dit], dit, resumable=True)
    prompts = val_prompts(data, a.num_videos)
    run("5/6 sample", ["sample.py", "--checkpoint", dit, "--num_videos", a.num_videos, "--sampler", SAMPLER, "--steps", STEPS,
                       "--prompts", *prompts, "--cfg_scale", CFG_SCALE, "--output_dir", out / "samples"],
        out / "samples" / "grid.gif")
    if a.with_gpt:
        vq = runs / "train_vqvae/demo_vq/checkpoints/last.ckpt"
        # the tokenizer starts from the KL-VAE (encoder -> its posterior mean, same decoder): it inherits the colour
        # the KL-VAE learned instead of spending its own steps on it; per-frame codes (s4t1, replicate padding) keep
        # colour and persist where nothing moves (README, tokenizer table)
        run("+ VQ-VAE", ["train_vqvae.py", *common, "--network_variant", "s4t1_m_vq", "--n_codes", 1024,
                         "--embedding_dim", VAE_RECIPE[VAE_RECIPE.index("--embedding_dim") + 1], "--init_from", vae,
                         "--low_utilization_cost", 0.1, "--reinit_every_n_epochs", 1, "--batch_size", 8, "--lr", 5e-4,
                         "--chroma_weight", 4, "--epochs", 1000, "--max_time", hms(vae_minutes), "--run_name", "demo_vq",
                         *tiny_vae], vq, resumable=True)
        # the GPT memorises 1024 clips (val/train fg-token loss 5.2/3.9 nats); videos are free: it trains on
        # --gpt_videos of them (the same generator and seed: the demo's train videos are the first 1024)
        gpt_data = f"{a.name}_gpt"
        run("+ GPT data", [*flying, "--name", gpt_data, "--num_train", a.gpt_videos, "--num_val", 1],
            WORK / "data" / gpt_data / "val" / "metadata.jsonl")
        tokens = WORK / f"data/latents/{gpt_data}__demo_vq_tokens_16frames_train.npy"
        # near-duplicate codes merged (< 0.4 apart): unchanged cells keep their code (README, bench_tokens.py)
        run("+ tokens", ["tokenize_videos.py", "--dataset", gpt_data, *clips, "--vae", vq, "--batch_size", 16,
                         "--merge_codes", 0.4, "--decode", 2], tokens)
        gpt = runs / "train_latent_nanogpt/demo_gpt/checkpoints/last.ckpt"
        # block 512 = two frames of 16x16 codes; GPT_RECIPE: every token reads the codes around its cell in the
        # two frames before it (what carries a moving digit forward) and those already drawn in its own frame
        # (README, section 5 and the GPT tables: val loss 0.55 against 0.71, continuations keep 24-27% of digits, not 5%);
        # 30% of windows start a clip cut at a random frame: the first frame, drawn from nothing, gets more practice
        # (README "Windows that start where sampling starts": legible per frame 0.29 against 0.23, class kept 27% vs 22%);
        # --ink_temperature 0.3: its samples draw digit codes cooler, background at the model's odds (README "A cooler
        # draw of the digits only")
        run("+ GPT", ["train_latent_nanogpt.py", "--tokens_input_file", tokens, "--block_size", 512, "--n_layer", 4,
                      "--n_head", 4, "--n_embd", 256, "--dropout", 0.0, "--batch_size", 16, "--learning_rate", 1e-3,
                      "--max_iters", 100000, "--min_lr", 1e-4, "--class_conditional",
                      "--lr_decay_iters", max(1, round(GPT_STEPS_PER_MINUTE * gen_minutes)),
                      *GPT_RECIPE,
                      "--max_time", hms(gen_minutes), "--eval_interval", 200, "--eval_iters", 4,
                      "--sample_interval", 0, "--num_workers", 1, "--run_name", "demo_gpt", *tiny_gpt], gpt, resumable=True)
        # its samples nobody prompted: each video's digits drawn from the training data's, then guided (as RCG)
        run("+ GPT samples", ["sample.py", "--checkpoint", gpt, "--num_videos", a.num_videos, "--prior_labels",
                              "--cfg_scale", CFG_SCALE, "--output_dir", out / "gpt_samples"], out / "gpt_samples" / "grid.gif")
    n_eval = 8 if a.tiny else a.eval_videos
    tiny_eval = ["--feature_steps", 10] if a.tiny else []
    evals = [("ST-DiT (rf)", out / "results.json",
              ["--checkpoint", dit, "--prompted", "--cfg_scale", CFG_SCALE, "--sampler", SAMPLER, "--steps", STEPS, "--vae", vae])]
    if a.with_gpt:
        # samples nobody prompted, two ways: the null label, and digits drawn from the training data's then guided
        # (--prior_labels, as RCG; README "Samples nobody prompted")
        evals.append(("GPT", out / "results_gpt.json", ["--checkpoint", gpt, "--continuation", 4, "--prompted",
                                                        "--prior_labels", "--cfg_scale", CFG_SCALE,
                                                        "--continuation_cfg", CFG_SCALE]))
    for label, res, args in evals:
        run(f"6/6 evaluate {label}", ["evaluate.py", "--dataset", a.name, "--num_fmd", n_eval, "--num_videos", n_eval,
                                      *args, "--output", res, *tiny_eval], res)
    import json
    rows, seen_real = [], False
    for label, res, _ in evals:
        for k, r in json.loads(res.read_text())["results"].items():
            if k.startswith("real") or k == "noise":  # the target and the controls, once
                if seen_real:
                    continue
                rows.append(("real videos" if k.startswith("real") else "control", k, r))
            else:
                rows.append((label if k != "vae reconstruction" else "VAE", k, r))
        seen_real = True
    print("\n[demo] results (real rows: the target; FMD: lower is better, its floor is real vs real at the same size):")
    print(results_table(rows))
    print(f"\n[demo] finished in {(time.time() - t0) / 60:.1f} min. Outputs:\n"
          f"  videos:          {data}/{{train,val}}/*.mp4 (+ metadata.jsonl)\n"
          f"  VAE:             {vae}  (recon samples: {vae.parent.parent / 'samples'})\n"
          f"  latents:         {latents} (+ .json sidecar; decoded check: {latents.with_name(latents.stem + '_decoded')})\n"
          f"  diffusion model: {dit}\n"
          f"  samples:         {out / 'samples'}/grid.gif, grid.mp4, 000.mp4 ... (prompts: {' '.join(prompts)})\n"
          f"  evaluation:      {out / 'results.json'}")
    if a.with_gpt:
        print(f"  GPT samples:     {out / 'gpt_samples'}/grid.gif (digits drawn from the training data's)\n"
              f"  GPT continuations (first 4 frames given, prompted with their digits): {WORK / 'runs/evaluate/continuation_demo_gpt.gif'}")


if __name__ == "__main__":
    main()
