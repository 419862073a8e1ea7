"""The main job's plumbing: `demo.py --tiny` runs every stage (data, VAE, latents, class-conditional rectified-flow
ST-DiT, prompted sampling, evaluation of samples and reconstructions) in a temp dir, and prints its table."""
import json

import torch

from conftest import run
from demo import recipe_value


def test_demo_tiny_runs_every_stage(tmp_path):
    out = run("demo.py", ["--tiny", "--workdir", tmp_path, "--num_train", 12, "--num_val", 4, "--num_videos", 2], tmp_path,
              timeout=900)
    for path in ["data/flying_mnist_demo/val/metadata.jsonl", "runs/train_vqvae/demo_vae/checkpoints/last.ckpt",
                 "data/latents/flying_mnist_demo__demo_vae_latents_16frames_train.npy",
                 "runs/iddpm/demo_dit/checkpoints/last.ckpt", "runs/demo/samples/grid.gif", "runs/demo/samples/001.mp4"]:
        assert (tmp_path / path).exists(), path
    results = json.loads((tmp_path / "runs/demo/results.json").read_text())["results"]
    assert {"real (held out)", "generated", "vae reconstruction"} <= set(results)
    assert "prompt_accuracy" in json.dumps(results) and "colour_error" in results["vae reconstruction"]
    assert "| real videos |" in out.stdout and "legible / frame" in out.stdout
    assert "Warning" not in out.stderr and "will be deleted" not in out.stderr  # a console a person can read
    for ckpt in ("train_vqvae/demo_vae", "iddpm/demo_dit"):  # --tiny bounds training by steps, not by minutes
        assert torch.load(tmp_path / "runs" / ckpt / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 3
    # a second run skips every finished stage
    again = run("demo.py", ["--tiny", "--workdir", tmp_path, "--num_train", 12, "--num_val", 4, "--num_videos", 2], tmp_path)
    assert again.stdout.count("already done") >= 6
    # --with_gpt adds the token path on top (finished stages skipped): a VQ tokenizer warm-started from the
    # demo's KL-VAE, tokens, a digit-conditioned GPT, evaluated with prompts and continuations
    gpt = run("demo.py", ["--tiny", "--with_gpt", "--workdir", tmp_path, "--num_train", 12, "--num_val", 4,
                          "--num_videos", 2, "--gpt_videos", 20], tmp_path, timeout=900)
    runs = tmp_path / "runs"
    kl = torch.load(runs / "train_vqvae/demo_vae/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    vq = torch.load(runs / "train_vqvae/demo_vq/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    w0, w1 = kl["model.decoder.conv_in.weight"], vq["model.decoder.conv_in.weight"]  # per-frame tokenizer from the
    assert w0.shape == w1.shape and (w1 - w0).abs().max() < 0.1 * w0.abs().max()  # s4t4 KL-VAE: 3 steps away
    tokens = json.loads((tmp_path / "data/latents/flying_mnist_demo_gpt__demo_vq_tokens_16frames_train.json").read_text())
    assert tokens["shape"] == [20, 16, 16, 16]  # the GPT's own, larger video set; one latent frame per frame
    gpt_ck = torch.load(runs / "train_latent_nanogpt/demo_gpt/checkpoints/last.ckpt", weights_only=True)["minisora"]
    assert gpt_ck["config"]["prev_frames"] == 2 and gpt_ck["config"]["same_frame"]
    gpt_cfg = json.loads((runs / "train_latent_nanogpt/demo_gpt/config.json").read_text())
    assert gpt_cfg["first_frame_windows"] == 0.3
    assert gpt_cfg["lr_decay_iters"] == int(recipe_value("gpt", "--lr_decay_iters"))  # the recipe's, whole
    res = json.loads((runs / "demo/results_gpt.json").read_text())
    assert "class_kept" in json.dumps(res) and "prompt_accuracy" in json.dumps(res)
    assert "prompt_accuracy" in res["results"]["generated (labels drawn from the training data)"]
    prior = gpt_ck["label_prior"]  # the digit sets of the GPT's 20 training videos, what --prior_labels draws
    assert sum(prior["counts"]) == 20 and all(0 < len(d) <= 2 for d in prior["sets"])
    dit_prior = torch.load(runs / "iddpm/demo_dit/checkpoints/last.ckpt", weights_only=True)["minisora"]["label_prior"]
    assert sum(dit_prior["counts"]) == 12
    assert (runs / "demo/gpt_samples/grid.gif").exists() and "digits drawn from the training data" in gpt.stdout
    assert (runs / "evaluate/continuation_demo_gpt.gif").exists() and "| GPT |" in gpt.stdout
    # sample.py with a checkpoint alone draws with its recipe's settings (recipes/*.args, kept in the checkpoint)
    dit = run("sample.py", ["--checkpoint", runs / "iddpm/demo_dit/checkpoints/last.ckpt", "--num_videos", 1,
                            "--output_dir", tmp_path / "s1"], tmp_path)
    steps, scale = recipe_value("dit", "--sample_steps"), float(recipe_value("dit", "--cfg_scale"))
    assert f"({recipe_value('dit', '--sampler')}, {steps} steps, guidance {scale})" in dit.stdout, dit.stdout
    tok = run("sample.py", ["--checkpoint", runs / "train_latent_nanogpt/demo_gpt/checkpoints/last.ckpt", "--num_videos",
                            1, "--output_dir", tmp_path / "s2"], tmp_path)
    ink, scale = float(recipe_value("gpt", "--ink_temperature")), float(recipe_value("gpt", "--cfg_scale"))
    assert f"guidance {scale}, digit codes at temperature {ink})" in tok.stdout, tok.stdout
