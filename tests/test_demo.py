"""The main job's plumbing: `demo.py --tiny` runs every stage (data, VAE, latents, class-conditional rectified-flow
ST-DiT, prompted sampling, evaluation of samples and reconstructions) in a temp dir, and prints its table."""
import json

import torch

from conftest import run


def test_demo_tiny_runs_every_stage(tmp_path):
    out = run("demo.py", ["--tiny", "--workdir", tmp_path, "--num_train", 12, "--num_val", 4, "--num_videos", 2], tmp_path,
              timeout=900)
    for path in ["data/flying_mnist_demo/val/metadata.jsonl", "runs/train_vqvae/demo_vae/checkpoints/last.ckpt",
                 "data/latents/flying_mnist_demo__demo_vae_latents_16frames_train.npy",
                 "runs/iddpm/demo_dit/checkpoints/last.ckpt", "runs/demo/samples/grid.gif", "runs/demo/samples/001.mp4"]:
        assert (tmp_path / path).exists(), path
    results = json.loads((tmp_path / "runs/demo/results.json").read_text())["results"]
    assert {"real (val)", "generated", "vae reconstruction"} <= set(results)
    assert "prompt_accuracy" in json.dumps(results) and "colour_error" in results["vae reconstruction"]
    assert "| real videos |" in out.stdout and "legible / frame" in out.stdout
    assert "Warning" not in out.stderr and "will be deleted" not in out.stderr  # a console a person can read
    for ckpt in ("train_vqvae/demo_vae", "iddpm/demo_dit"):  # --tiny bounds training by steps, not by minutes
        assert torch.load(tmp_path / "runs" / ckpt / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 3
    # a second run skips every finished stage
    again = run("demo.py", ["--tiny", "--workdir", tmp_path, "--num_train", 12, "--num_val", 4, "--num_videos", 2], tmp_path)
    assert again.stdout.count("already done") >= 6
