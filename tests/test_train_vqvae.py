import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run
from minisora.metrics import psnr, ssim
from minisora.resolve import load_vae, reference_kind, model_id

SEED_VQ = ("--batch_size 2 --resolution 256 --sequence_length 32 --embedding_dim 4 --n_codes 5120 --limit_train_batches 1.0 "
           "--limit_val_batches 0.25 --epochs 150 --save_every_n_epochs 5 --low_utilization_cost 0.1 --network_variant s8_b "
           "--lr 0.001 --kl_loss_weight 0.01 --commitment_cost 0.25 --track").split()
SEED_KL = ("--batch_size 2 --resolution 256 --sequence_length 32 --embedding_dim 4 --n_codes 5120 --limit_train_batches 1.0 "
           "--limit_val_batches 0.25 --epochs 150 --save_every_n_epochs 5 --low_utilization_cost 0.1 --network_variant vae_s4t4_b "
           "--lr 0.001 --kl_loss_weight 0.1 --commitment_cost 0.25 --track").split()


def tiny_overrides(data_dir, out, run):
    return ["--dataset", "tiny", "--data_dir", str(data_dir), "--output_dir", str(out), "--run_name", run,
            "--resolution", "32", "--sequence_length", "8", "--epochs", "1", "--limit_train_batches", "3",
            "--limit_val_batches", "1", "--n_codes", "64", "--channels", "8", "8", "8", "--num_workers", "0",
            "--save_every_n_epochs", "1", "--log_videos_every", "2", "--log_every_n_steps", "1"]


def run_script(args, cwd=ROOT, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "WANDB_DIR": str(cwd)}
    out = subprocess.run([sys.executable, str(ROOT / "train_vqvae.py"), *args], capture_output=True, text=True,
                         cwd=cwd, env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.parametrize("seed_args,run", [(SEED_VQ, "vq"), (SEED_KL, "kl")])
def test_seed_commands_run_with_tiny_overrides(tiny_data, tmp_path, seed_args, run):
    out = run_script(seed_args + tiny_overrides(tiny_data, tmp_path, run), cwd=tmp_path)
    d = tmp_path / "train_vqvae" / run
    assert "checkpoint:" in out.stdout and (d / "checkpoints/last.ckpt").exists()
    ckpt = torch.load(d / "checkpoints/last.ckpt", weights_only=True)  # plain types only
    assert ckpt["minisora"]["kind"] == "vae" and ckpt["minisora"]["config"]["quantize"] == (run == "vq")
    rows = list(csv.DictReader(open(d / "metrics.csv")))
    assert any(r.get("val/psnr") for r in rows) and any(r.get("train/loss") for r in rows)
    if run == "vq":
        assert any(r.get("val/codebook_usage") for r in rows) and ckpt["minisora"]["config"]["variant"] == "s8_b"
    else:
        assert ckpt["minisora"]["config"]["kl"] and ckpt["minisora"]["config"]["kl_weight"] == 0.1
    assert list((d / "samples").glob("train_recon_*.mp4")) and list((d / "samples").glob("val_recon_*.mp4"))
    vae = load_vae(str(d / "checkpoints/last.ckpt"))
    x = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 4, 2, 8, 8) and vae.decode(z).shape == x.shape
    assert vae.name == run
    if run == "vq":
        codes = vae.encode_codes(x)
        assert codes.shape == (2, 2, 8, 8) and int(codes.max()) < 64
        assert torch.allclose(vae.codes_to_vectors(codes), z)


def test_resume_continues_from_checkpoint(tiny_data, tmp_path):
    args = tiny_overrides(tiny_data, tmp_path, "r") + ["--network_variant", "vae_s4t4_b", "--seed", "3"]
    run_script(args, cwd=tmp_path)
    last = tmp_path / "train_vqvae/r/checkpoints/last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 3 and first["epoch"] == 0
    run_script(args[:args.index("--epochs")] + ["--epochs", "2"] + args[args.index("--epochs") + 2:] +
               ["--resume_from", str(last)], cwd=tmp_path)
    second = torch.load(last, weights_only=True)
    assert second["global_step"] == 6 and second["epoch"] == 1
    assert not torch.equal(first["state_dict"]["model.decoder.conv_out.weight"],
                           second["state_dict"]["model.decoder.conv_out.weight"])

    # --init_from: a VQ tokenizer warm-started from this KL-VAE begins with its decoder weights
    run_script(tiny_overrides(tiny_data, tmp_path, "warm") + ["--network_variant", "s4t4_b_vq", "--limit_train_batches", "1",
                                                              "--init_from", str(last)], cwd=tmp_path)
    warm = torch.load(tmp_path / "train_vqvae/warm/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    w0, w1 = second["state_dict"]["model.decoder.conv_in.weight"], warm["model.decoder.conv_in.weight"]
    assert (w1 - w0).abs().max() < 0.1 * w0.abs().max()  # one step from the KL-VAE's weights, not from scratch


def test_two_process_ddp_on_cpu(tiny_data, tmp_path):
    run_script(tiny_overrides(tiny_data, tmp_path, "ddp") + ["--network_variant", "s4t4_b_vq", "--accelerator", "cpu",
                                                             "--devices", "2", "--limit_train_batches", "1.0"],
               cwd=tmp_path, timeout=400)
    ckpt = torch.load(tmp_path / "train_vqvae/ddp/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3  # 12 videos sharded over 2 ranks, batch 2 -> 3 steps per epoch (6 on one process)


def test_bad_flags_fail_clearly(tiny_data, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    base = [sys.executable, str(ROOT / "train_vqvae.py"), "--dataset", "tiny", "--data_dir", str(tiny_data)]
    r = subprocess.run(base + ["--network_variant", "s4t4_b", "--downsample", "2", "2", "2"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "does not match" in r.stderr
    r = subprocess.run(base + ["--network_variant", "nope"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "invalid choice" in r.stderr
    r = subprocess.run(base + ["--resolution", "30"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "divisible" in r.stderr


def test_reference_kinds_and_offline_errors(monkeypatch):
    assert reference_kind("stabilityai/sd-vae-ft-mse") == "hf"
    assert reference_kind("zzsi_kungfu/videogpt/model-nilqq143:v14") == "wandb"
    assert model_id("zzsi_kungfu/videogpt/model-nilqq143:v14") == "model-nilqq143"
    assert model_id("stabilityai/sd-vae-ft-mse") == "sd-vae-ft-mse"
    with pytest.raises(FileNotFoundError, match="neither an existing path"):
        reference_kind("no_such_file.ckpt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(ConnectionError, match="Pass a local diffusers folder"):
        load_vae("stabilityai/sd-vae-ft-mse")
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(ConnectionError, match="wandb artifact get"):
        load_vae("zzsi_kungfu/videogpt/model-nilqq143:v14")
    assert time.time() - t < 10


def test_tiny_diffusers_vae_by_path(tmp_path):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  sample_size=32, scaling_factor=0.18215).save_pretrained(tmp_path / "sdvae")
    vae = load_vae(str(tmp_path / "sdvae"))
    assert (vae.kind, vae.spatial_stride, vae.temporal_stride, vae.scaling_factor) == ("diffusers", 2, 1, 0.18215)
    x = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 4, 3, 8, 8)
    raw = vae.module.encode(x[:, :, 1]).latent_dist.mean  # frame 1 of each video, unscaled
    assert torch.allclose(z[:, :, 1], raw * 0.18215, atol=1e-5)  # per frame, with the scaling factor
    assert vae.decode(z).shape == x.shape


def test_metrics():
    x = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    assert (psnr(x, x) > 100).all() and torch.allclose(ssim(x, x), torch.ones(2), atol=1e-4)
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)
    assert 20 < psnr(noisy, x).mean() < 30  # sigma 0.1 on a range of 2 -> ~26 dB
    assert ssim(torch.rand_like(x) * 2 - 1, x).mean() < 0.1


def test_checkpoint_save_load_identical_outputs(tmp_path):
    from minisora.checkpoint import FORMAT_VERSION, atomic_save
    from models.vqvae import VideoVAE, make_config
    torch.manual_seed(0)
    cfg = make_config("s8_b", channels=(8, 8, 8), n_codes=32)
    model = VideoVAE(cfg).train()
    x = torch.rand(2, 3, 8, 16, 16) * 2 - 1
    model(x)  # data-dependent codebook init + one EMA update
    model.eval()
    atomic_save({"minisora": {"format_version": FORMAT_VERSION, "kind": "vae", "config": cfg.to_dict()},
                 "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "vae.ckpt")
    vae = load_vae(str(tmp_path / "vae.ckpt"))
    with torch.no_grad():
        ref = model.encode(x)
        assert torch.equal(vae.encode_codes(x), ref["codes"])
        assert torch.equal(vae.decode_codes(ref["codes"]), model.decode_codes(ref["codes"]).clamp(-1, 1))


def test_default_vae_is_the_newest_of_an_accepted_kind(tiny_vaes, tiny_stage_files, tiny_data, tmp_path, monkeypatch):
    """--vae left out: the stage file's sidecar VAE; else the newest runs/train_vqvae/ checkpoint the stage accepts
    (tokens: a VQ one even when a KL one is newer), said on the console; else an error that says what to pass."""
    import shutil

    from minisora.resolve import choose_vae

    runs = tmp_path / "runs" / "train_vqvae"
    for k in ("vq", "kl"):  # the KL VAE is the newer one
        (runs / k / "checkpoints").mkdir(parents=True)
        shutil.copy(tiny_vaes[k], runs / k / "checkpoints" / "last.ckpt")
    os.utime(runs / "vq/checkpoints/last.ckpt", (1e9, 1e9))
    monkeypatch.chdir(tmp_path)
    assert choose_vae(None, "t", quantize=True) == str(Path("runs/train_vqvae/vq/checkpoints/last.ckpt"))
    assert choose_vae(None, "t", quantize=False) == str(Path("runs/train_vqvae/kl/checkpoints/last.ckpt"))
    assert choose_vae("mine", "t") == "mine"
    assert choose_vae(None, "t", {"vae": {"reference": "named"}}) == "named"
    # the encoding stages use it: tokenize_videos.py without --vae picks the VQ-VAE and says so
    out = run("tokenize_videos.py", ["--dataset", "tiny", "--data_dir", tiny_data, "--resolution", 32, "--sequence_length",
                                     8, "--num_workers", 0, "--max_videos", 2, "--output", tmp_path / "t.npy"], tmp_path)
    assert "using the newest VQ-VAE checkpoint, runs/train_vqvae/vq/checkpoints/last.ckpt" in out.stdout
    # iddpm.py without --vae takes the one its input's sidecar names
    out = run("iddpm.py", ["--latents_input_file", tiny_stage_files["latents"], "--depth", 1, "--hidden_size", 32,
                           "--num_heads", 2, "--latent_frames_to_generate", 2, "--max_steps", 1, "--sample_every", 0,
                           "--num_workers", 0, "--output_dir", tmp_path / "o"], tmp_path)
    assert f"--vae {tiny_vaes['kl']} (named in the input file's sidecar)" in out.stdout
    shutil.rmtree(tmp_path / "runs")
    with pytest.raises(ValueError, match="no --vae given and no quantizing"):
        choose_vae(None, "t", quantize=True)
