import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

TINY = dict(resolution=64, num_frames=16, min_digits=1, max_digits=2, digit_size_min=14, digit_size_max=22,
            min_speed=1.0, max_speed=4.0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A CPU-small Flying MNIST set: data_dir/tiny/{train,val}, 12 + 4 videos of 16 frames at 64²."""
    from generate_flying_mnist import generate
    from minisora.flying_mnist import FlyingMNISTConfig

    data_dir = tmp_path_factory.mktemp("data")
    generate(FlyingMNISTConfig(**TINY, seed=3), data_dir / "tiny", {"train": 12, "val": 4}, workers=1, progress=False)
    (data_dir / "tiny" / "info.json").write_text('{"generator": {"num_frames": 16}}')
    return data_dir


def run(script, args, cwd, ok=True, timeout=400):
    """Run a top-level script as a user would (offline wandb/HF); assert success unless ok=False."""
    import subprocess

    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "WANDB_DIR": str(cwd)}
    out = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                         cwd=cwd, env=env, timeout=timeout)
    if ok:
        assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def tiny_vaes(tiny_data, tmp_path_factory):
    """Two tiny project VAEs trained for a few steps on the tiny set: VQ (s8_b, K=300) and KL (vae_s4t4_b)."""
    out = tmp_path_factory.mktemp("runs")
    common = ["--dataset", "tiny", "--data_dir", tiny_data, "--output_dir", out, "--resolution", "32",
              "--sequence_length", "8", "--epochs", "1", "--limit_train_batches", "4", "--limit_val_batches", "0",
              "--channels", "8", "8", "8", "--n_codes", "300", "--num_workers", "0", "--log_videos_every", "0"]
    run("train_vqvae.py", common + ["--network_variant", "s8_b", "--run_name", "vq"], out)
    run("train_vqvae.py", common + ["--network_variant", "vae_s4t4_b", "--run_name", "kl"], out)
    return {k: out / f"train_vqvae/{k}/checkpoints/last.ckpt" for k in ("vq", "kl")}


@pytest.fixture(scope="session")
def tiny_stage_files(tiny_data, tiny_vaes, tmp_path_factory):
    """latents (KL VAE) and tokens (VQ VAE) of the tiny train split, 8 frames at 32²."""
    d = tmp_path_factory.mktemp("latents")
    common = ["--dataset", "tiny", "--data_dir", tiny_data, "--resolution", "32", "--sequence_length", "8",
              "--num_workers", "0", "--batch_size", "4"]
    run("latents.py", common + ["--vae", tiny_vaes["kl"], "--output", d / "tiny__kl_latents_8frames_train.npy"], d)
    run("tokenize_videos.py", common + ["--vae", tiny_vaes["vq"], "--output", d / "tiny__vq_tokens_8frames_train.npy"], d)
    return {"latents": d / "tiny__kl_latents_8frames_train.npy", "tokens": d / "tiny__vq_tokens_8frames_train.npy"}
