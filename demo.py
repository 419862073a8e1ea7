"""The whole MiniSora pipeline at CPU-small scale, one stage after another (~25 min on 2 CPU cores):

  1. generate Flying MNIST (64², 16 frames, 1-2 digits)            -> data/flying_mnist_demo/
  2. train a KL-VAE (4x4x4)                                        -> runs/train_vqvae/demo_vae/
  3. encode the train split into latents (+ decode check)          -> data/latents/flying_mnist_demo__demo_vae_latents_16frames_train.npy
  4. train an ST-DiT latent diffusion model                        -> runs/iddpm/demo_dit/
  5. sample videos with DPM-Solver++ (25 steps)                    -> runs/demo/samples/grid.gif
  6. evaluate them against real videos (FMD, legibility, motion)   -> runs/demo/results.json
  (--with_gpt adds a VQ-VAE, tokens and a GPT, sampled and evaluated too)

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="flying_mnist_demo", help="dataset name under data/")
    p.add_argument("--num_train", type=int, default=1024)
    p.add_argument("--num_val", type=int, default=64)
    p.add_argument("--minutes", type=float, default=22, help="training budget split over the VAE and the generator")
    p.add_argument("--with_gpt", action="store_true", help="also train a VQ-VAE and a GPT on its tokens")
    p.add_argument("--num_videos", type=int, default=8, help="videos to sample")
    p.add_argument("--eval_videos", type=int, default=32, help="videos sampled for evaluation")
    p.add_argument("--workdir", default=str(ROOT), help="where data/ and runs/ go (default: the repo)")
    p.add_argument("--tiny", action="store_true", help="smallest models (for tests: checks the plumbing, not quality)")
    a = p.parse_args(argv)
    global WORK
    WORK = Path(a.workdir).resolve()
    data, runs, out = WORK / "data" / a.name, WORK / "runs", WORK / "runs" / "demo"
    tiny_vae = ["--channels", 8, 8, 8] if a.tiny else []
    tiny_dit = ["--depth", 1, "--hidden_size", 32, "--num_heads", 2, "--max_steps", 3] if a.tiny else []
    tiny_gpt = ["--n_layer", 1, "--n_head", 2, "--n_embd", 32, "--max_iters", 3, "--eval_interval", 2] if a.tiny else []
    t0 = time.time()
    run("1/5 data", ["generate_flying_mnist.py", "--name", a.name, "--resolution", 64, "--num_frames", 16, "--max_digits", 2,
                     "--digit_size_min", 20, "--digit_size_max", 28, "--min_speed", 1, "--max_speed", 4,
                     "--num_train", a.num_train, "--num_val", a.num_val], data / "val" / "metadata.jsonl")
    common = ["--dataset", a.name, "--resolution", 64, "--sequence_length", 16, "--num_workers", 1]
    vae = runs / "train_vqvae/demo_vae/checkpoints/last.ckpt"
    run("2/5 KL-VAE", ["train_vqvae.py", *common, "--network_variant", "vae_s4t4_m", "--kl_loss_weight", 1e-4,
                       "--batch_size", 8, "--lr", 1e-3, "--epochs", 1000, "--max_time", hms(a.minutes * 0.45),
                       "--run_name", "demo_vae", "--log_every_n_steps", 20, *tiny_vae], vae, resumable=True)
    latents = WORK / f"data/latents/{a.name}__demo_vae_latents_16frames_train.npy"
    run("3/5 latents", ["latents.py", *common, "--vae", vae, "--batch_size", 16, "--decode", 4], latents)
    dit = runs / "iddpm/demo_dit/checkpoints/last.ckpt"
    run("4/5 diffusion", ["iddpm.py", "--latents_input_file", latents, "--vae", vae, "--latent_frames_to_generate", 4,
                          "--depth", 6, "--hidden_size", 192, "--num_heads", 6, "--patch_size", "1,2,2", "--batch_size", 8,
                          "--lr", 5e-4, "--warmup_steps", 100, "--ema_decay", 0.999, "--max_steps", 100000, "--epochs", -1,
                          "--max_time", hms(a.minutes * 0.55), "--sample_every", 0, "--checkpoint_every", 500,
                          "--log_every", 20, "--num_workers", 1, "--run_name", "demo_dit", *tiny_dit], dit, resumable=True)
    run("5/5 sample", ["sample.py", "--checkpoint", dit, "--num_videos", a.num_videos, "--sampler", "dpm++", "--steps", 25,
                       "--output_dir", out / "samples"], out / "samples" / "grid.gif")
    if a.with_gpt:
        vq = runs / "train_vqvae/demo_vq/checkpoints/last.ckpt"
        run("+ VQ-VAE", ["train_vqvae.py", *common, "--network_variant", "s4t4_m_vq", "--n_codes", 1024,
                         "--low_utilization_cost", 0.1, "--reinit_every_n_epochs", 1, "--batch_size", 8, "--lr", 1e-3,
                         "--epochs", 1000, "--max_time", hms(a.minutes * 0.45), "--run_name", "demo_vq", *tiny_vae], vq, resumable=True)
        tokens = WORK / f"data/latents/{a.name}__demo_vq_tokens_16frames_train.npy"
        run("+ tokens", ["tokenize_videos.py", *common, "--vae", vq, "--batch_size", 16, "--decode", 2], tokens)
        gpt = runs / "train_latent_nanogpt/demo_gpt/checkpoints/last.ckpt"
        run("+ GPT", ["train_latent_nanogpt.py", "--tokens_input_file", tokens, "--block_size", 256, "--n_layer", 4,
                      "--n_head", 4, "--n_embd", 256, "--dropout", 0.0, "--batch_size", 16, "--learning_rate", 1e-3,
                      "--max_iters", 100000, "--lr_decay_iters", 3000, "--min_lr", 1e-4, "--max_time", hms(a.minutes * 0.55),
                      "--eval_interval", 200, "--eval_iters", 4, "--sample_interval", 0, "--num_workers", 1,
                      "--run_name", "demo_gpt", *tiny_gpt], gpt, resumable=True)
    evals = [("diffusion (ST-DiT)", dit, out / "results.json")]
    if a.with_gpt:
        evals.append(("GPT", gpt, out / "results_gpt.json"))
    for label, ck, res in evals:
        run(f"evaluate {label}", ["evaluate.py", "--dataset", a.name, "--checkpoint", ck, "--num_videos", a.eval_videos,
                                  "--num_real", a.eval_videos, "--vae", vae, "--output", res]
            + (["--feature_steps", 10] if a.tiny else []), res)
    import json
    print("\n[demo] results (FMD: lower is better; 'real (val)' is the real-vs-real floor):")
    print("| model | set | FMD | legibility | identity switches | motion residual px |\n|---|---|---|---|---|---|")
    for label, _, res in evals:
        for k, r in json.loads(res.read_text())["results"].items():
            if "FMD" in r:
                print(f"| {label} | {k} | {r['FMD']:.2f} | {r['legibility']:.3f} | {r['identity_switch_rate']:.3f} | "
                      f"{r['motion_residual_px']:.2f} |")
    print(f"\n[demo] finished in {(time.time() - t0) / 60:.1f} min. Outputs:\n"
          f"  videos:          {data}/{{train,val}}/*.mp4 (+ metadata.jsonl)\n"
          f"  VAE:             {vae}  (recon samples: {vae.parent.parent / 'samples'})\n"
          f"  latents:         {latents} (+ .json sidecar; decoded check: {latents.with_name(latents.stem + '_decoded')})\n"
          f"  diffusion model: {dit}\n"
          f"  samples:         {out / 'samples'}/grid.gif, grid.mp4, 000.mp4 ...\n"
          f"  evaluation:      {out / 'results.json'}")
    if a.with_gpt:
        print(f"  GPT samples:     {gpt.parent.parent / 'samples'}")


if __name__ == "__main__":
    main()
