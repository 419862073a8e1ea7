"""Every seed command of train_dit.py / iddpm.py with tiny overrides, checkpoint -> sample.py, resume, DDP."""
import csv

import pytest
import torch

from conftest import run

TINY_STDIT = ["--depth", "1", "--hidden_size", "32", "--num_heads", "2", "--max_steps", "3", "--batch_size", "2",
              "--accumulate_grad_batches", "1", "--latent_frames_to_generate", "2", "--sample_every", "2",
              "--sample_steps", "2", "--checkpoint_every", "2", "--log_every", "1", "--num_workers", "0"]

SEED_IDDPM = [
    "--batch_size 4 --accumulate_grad_batches 8 --latent_frames_to_generate 8 --diffusion_steps 1000 --max_steps 1000000 "
    "--log_every 50 --sample_every 2000 --clip_grad 1.0 --vae {kl} --latents_input_file {latents} --track",
    "--batch_size 1 --accumulate_grad_batches 32 --depth 16 --num_heads 12 --hidden_size 768 --max_steps 1000000 --log_every 50 "
    "--sample_every 2000 --diffusion_steps 1000 --clip_grad 1.0 --latent_frames_to_generate 8 --tokens_input_file {tokens} "
    "--vae {vq} --track",
    "--batch_size 1 --accumulate_grad_batches 32 --depth 16 --num_heads 12 --hidden_size 768 --max_steps 1000000 --log_every 500 "
    "--sample_every 5000 --checkpoint_every 500000 --diffusion_steps 1000 --clip_grad 1.0 --latent_frames_to_generate 32 "
    "--latents_input_file {latents} --vae {kl} --resume_from {resume} --track",
]


def _fmt(cmd, **kw):
    return cmd.format(**kw).split()


@pytest.fixture(scope="module")
def first_iddpm(tiny_vaes, tiny_stage_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("iddpm")
    args = _fmt(SEED_IDDPM[0], kl=tiny_vaes["kl"], latents=tiny_stage_files["latents"])
    res = run("iddpm.py", args + TINY_STDIT + ["--output_dir", out, "--run_name", "a"], out)
    return out / "iddpm/a", res


def test_ema_warms_up_in_short_runs(first_iddpm):
    """--ema_decay 0.9999 (the seed's default) must not leave a short run's EMA at its initial weights."""
    d, _ = first_iddpm
    last, prev = (torch.load(d / f"checkpoints/{n}", weights_only=True)["state_dict"] for n in ("last.ckpt", "step0000002.ckpt"))
    keys = [k[4:] for k in last if k.startswith("ema.") and last[k].is_floating_point()]
    diff = lambda a, b: sum(float((a[k] - b[k]).norm() ** 2) for k in keys) ** 0.5  # noqa: E731
    ema3, ema2, model3 = ({k: sd[p + k] for k in keys} for sd, p in ((last, "ema."), (prev, "ema."), (last, "model.")))
    assert diff(ema3, model3) < diff(ema3, ema2)  # decay (1+3)/(10+3) at step 3, not 0.9999


def test_iddpm_seed_command_latents(first_iddpm):
    d, res = first_iddpm
    ckpt = torch.load(d / "checkpoints/last.ckpt", weights_only=True)
    meta = ckpt["minisora"]
    assert meta["kind"] == "stdit" and meta["diffusion"]["respace"] == 1000 and meta["config"]["learn_sigma"]
    assert len(meta["latent"]["mean"]) == 4 and meta["latent"]["shape"] == [4, 2, 8, 8]
    assert any(k.startswith("ema.") for k in ckpt["state_dict"]) and ckpt["global_step"] == 3
    assert (d / "checkpoints/step0000002.ckpt").exists()
    rows = list(csv.DictReader(open(d / "metrics.csv")))
    assert any(r.get("train/loss") for r in rows) and any(r.get(f"train/loss_q{k}") for r in rows for k in range(4))
    assert list((d / "samples").glob("sample_step0000002.mp4")) and list((d / "samples").glob("*.gif"))
    assert "sample.py --checkpoint" in res.stdout


def test_iddpm_seed_command_tokens(tiny_vaes, tiny_stage_files, tmp_path):
    args = _fmt(SEED_IDDPM[1], vq=tiny_vaes["vq"], tokens=tiny_stage_files["tokens"])
    run("iddpm.py", args + TINY_STDIT + ["--output_dir", tmp_path, "--run_name", "tok"], tmp_path)
    ckpt = torch.load(tmp_path / "iddpm/tok/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["minisora"]["latent"]["shape"] == [4, 2, 8, 8]


def test_iddpm_resume_continues(first_iddpm, tiny_vaes, tiny_stage_files, tmp_path):
    d, _ = first_iddpm
    args = _fmt(SEED_IDDPM[2], kl=tiny_vaes["kl"], latents=tiny_stage_files["latents"], resume=d / "checkpoints/last.ckpt")
    over = TINY_STDIT[:TINY_STDIT.index("--max_steps")] + ["--max_steps", "5"] + TINY_STDIT[TINY_STDIT.index("--max_steps") + 2:]
    run("iddpm.py", args + over + ["--output_dir", tmp_path, "--run_name", "b"], tmp_path)
    before = torch.load(d / "checkpoints/last.ckpt", weights_only=True)
    after = torch.load(tmp_path / "iddpm/b/checkpoints/last.ckpt", weights_only=True)
    assert after["global_step"] == 5  # continued from step 3, not restarted
    opt_b, opt_a = before["optimizer_states"][0]["state"], after["optimizer_states"][0]["state"]
    assert int(opt_a[0]["step"]) == int(opt_b[0]["step"]) + 2  # optimizer state restored, then advanced
    rows = list(csv.DictReader(open(tmp_path / "iddpm/b/metrics.csv")))
    assert {int(r["step"]) for r in rows if r.get("train/loss")} <= {3, 4}  # a new folder: only the resumed steps


def test_iddpm_resume_is_exact(tiny_vaes, tiny_stage_files, tmp_path):
    """3 steps + resume to 5 gives the weights of 5 uninterrupted steps (the checkpoint holds the RNG states;
    3 steps of batch 4 over the 12 latents rows end an epoch, so the data order is restored too)."""
    base = _fmt(SEED_IDDPM[0], kl=tiny_vaes["kl"], latents=tiny_stage_files["latents"]) + TINY_STDIT + \
        ["--batch_size", "4", "--output_dir", tmp_path]
    run("iddpm.py", base + ["--max_steps", "3", "--run_name", "a"], tmp_path)
    run("iddpm.py", base + ["--max_steps", "5", "--run_name", "b", "--resume_from", tmp_path / "iddpm/a/checkpoints/last.ckpt"],
        tmp_path)
    run("iddpm.py", base + ["--max_steps", "5", "--run_name", "c"], tmp_path)
    b, c = (torch.load(tmp_path / f"iddpm/{r}/checkpoints/last.ckpt", weights_only=True)["state_dict"] for r in "bc")
    assert b.keys() == c.keys() and all(torch.equal(b[k], c[k]) for k in b)


def test_train_dit_seed_command_own_vae(tiny_data, tiny_vaes, tmp_path):
    seed = ("--model Latte-S/2 --vae_model {kl} --batch_size 2 --num_clips_per_video 10 --lr 0.00002 --resolution 256 "
            "--sequence_length 4 --latent_input_size 64 --ae_temporal_stride 4 --ae_spatial_stride 4 --learn_sigma "
            "--ckpt_every 1000000 --sample_every 2000 --log_every 20 --epochs 100 --track")
    tiny = ["--model", "Latte-T/2", "--dataset", "tiny", "--data_dir", tiny_data, "--resolution", "32",
            "--sequence_length", "2", "--latent_input_size", "8", "--num_clips_per_video", "1", "--max_steps", "2",
            "--sample_every", "2", "--sample_steps", "2", "--log_every", "1", "--num_workers", "0",
            "--latent_stat_batches", "2", "--output_dir", tmp_path, "--run_name", "dit"]
    run("train_dit.py", _fmt(seed, kl=tiny_vaes["kl"]) + tiny, tmp_path)
    ckpt = torch.load(tmp_path / "train_dit/dit/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["minisora"]["kind"] == "latte" and ckpt["minisora"]["config"]["num_frames"] == 2
    assert ckpt["minisora"]["latent"]["shape"] == [4, 2, 8, 8] and ckpt["global_step"] == 2
    # the checkpoint alone is enough to sample, with each sampler
    for sampler, steps in (("ddim", 3), ("dpm++", 3), ("ddpm", 4)):
        out = run("sample.py", ["--checkpoint", tmp_path / "train_dit/dit/checkpoints/last.ckpt", "--num_videos", "2",
                                "--sampler", sampler, "--steps", steps, "--output_dir", tmp_path / sampler], tmp_path)
        assert (tmp_path / sampler / "grid.gif").exists() and (tmp_path / sampler / "001.mp4").exists(), out.stdout
    bad = run("train_dit.py", _fmt(seed, kl=tiny_vaes["kl"]) + tiny[:-2] + ["--latent_input_size", "16"], tmp_path, ok=False)
    assert bad.returncode != 0 and "--latent_input_size 16" in bad.stderr


def test_train_dit_seed_command_sd_vae(tiny_data, tmp_path):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  scaling_factor=0.18215).save_pretrained(tmp_path / "sd-vae-tiny")
    seed = ("--model Latte-T/2 --batch_size 2 --lr 0.00002 --resolution 256 --sequence_length 4 --latent_input_size 32 "
            "--ae_temporal_stride 1 --ae_spatial_stride 8 --learn_sigma --ckpt_every 1000000 --sample_every 5000 "
            "--log_every 100 --epochs 10000 --track").split()
    tiny = ["--vae_model", tmp_path / "sd-vae-tiny", "--ae_spatial_stride", "2", "--dataset", "tiny", "--data_dir", tiny_data,
            "--resolution", "16", "--sequence_length", "2", "--latent_input_size", "8", "--max_steps", "2",
            "--num_clips_per_video", "1", "--sample_every", "0", "--num_workers", "0", "--latent_stat_batches", "1",
            "--output_dir", tmp_path, "--run_name", "sd"]
    run("train_dit.py", seed + tiny, tmp_path)
    assert torch.load(tmp_path / "train_dit/sd/checkpoints/last.ckpt", weights_only=True)["global_step"] == 2


def test_iddpm_two_process_ddp(tiny_vaes, tiny_stage_files, tmp_path):
    args = _fmt(SEED_IDDPM[0], kl=tiny_vaes["kl"], latents=tiny_stage_files["latents"])
    run("iddpm.py", args + TINY_STDIT + ["--output_dir", tmp_path, "--accelerator", "cpu", "--devices", "2",
                                         "--sample_every", "0", "--max_steps", "-1", "--epochs", "1"], tmp_path)
    runs = list((tmp_path / "iddpm").iterdir())  # the default (timestamp) run name is shared by both ranks
    assert len(runs) == 1
    # one epoch of the 12 latents rows sharded over 2 ranks at batch 2: 3 optimizer steps (6 on one process)
    assert torch.load(runs[0] / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 3


def test_iddpm_rectified_flow(tiny_vaes, tiny_stage_files, tmp_path):
    """--objective rf: iddpm.py's default --learn_sigma is turned off with one line, the checkpoint records the
    objective, losses are logged by t quartile, periodic samples follow optimizer steps (here every step of 2
    accumulated batches: steps 1 and 2, never step 0), and sample.py samples it (euler by default)."""
    args = _fmt(SEED_IDDPM[0], kl=tiny_vaes["kl"], latents=tiny_stage_files["latents"]) + TINY_STDIT + \
        ["--objective", "rf", "--accumulate_grad_batches", "2", "--sample_every", "1", "--max_steps", "2",
         "--output_dir", tmp_path, "--run_name", "rf"]
    res = run("iddpm.py", args, tmp_path)
    assert res.stdout.count("learn_sigma turned off") == 1, res.stdout
    d = tmp_path / "iddpm/rf"
    meta = torch.load(d / "checkpoints/last.ckpt", weights_only=True)["minisora"]
    assert meta["diffusion"]["objective"] == "rf" and not meta["config"]["learn_sigma"]
    rows = list(csv.DictReader(open(d / "metrics.csv")))
    assert any(r.get(f"train/loss_q{k}") for r in rows for k in range(4))
    samples = sorted(p.name for p in (d / "samples").glob("sample_step*.mp4"))
    assert samples == ["sample_step0000001.mp4", "sample_step0000002.mp4"], samples
    for extra, want in (([], "euler, 3 steps"), (["--sampler", "dpm++"], "euler, 3 steps"), (["--sampler", "heun"], "heun, 3 steps")):
        out = run("sample.py", ["--checkpoint", d / "checkpoints/last.ckpt", "--num_videos", "1", "--steps", "3",
                                "--output_dir", tmp_path / "s", *extra], tmp_path)
        assert want in out.stdout, out.stdout
        assert ("epsilon-model sampler" in out.stdout) == bool(extra and extra[1] == "dpm++"), out.stdout


def test_iddpm_short_chain_samples(tiny_vaes, tiny_stage_files, tmp_path):
    """--diffusion_steps 10 with the default 25 sample steps: clamped to the chain (said once), no crash after
    training; sample.py on the checkpoint clamps too."""
    args = _fmt(SEED_IDDPM[0], kl=tiny_vaes["kl"], latents=tiny_stage_files["latents"]) + TINY_STDIT + \
        ["--diffusion_steps", "10", "--max_steps", "2", "--sample_steps", "25", "--output_dir", tmp_path, "--run_name", "short"]
    res = run("iddpm.py", args, tmp_path)
    assert res.stdout.count("--sample_steps 25 > --diffusion_steps 10") == 1, res.stdout
    d = tmp_path / "iddpm/short"
    assert (d / "samples/sample_final_step0000002.mp4").exists() and (d / "samples/sample_step0000002.mp4").exists()
    assert torch.load(d / "checkpoints/last.ckpt", weights_only=True)["minisora"]["diffusion"]["respace"] == 10
    out = run("sample.py", ["--checkpoint", d / "checkpoints/last.ckpt", "--num_videos", "1", "--steps", "25",
                            "--output_dir", tmp_path / "s"], tmp_path)
    assert "25 steps asked on a 10-step chain" in out.stdout, out.stdout


def test_train_dit_rectified_flow(tiny_vaes, tiny_stage_files, tmp_path):
    seed = ("--model Latte-S/2 --vae_model {kl} --batch_size 2 --num_clips_per_video 10 --lr 0.00002 --resolution 256 "
            "--sequence_length 4 --latent_input_size 64 --ae_temporal_stride 4 --ae_spatial_stride 4 --learn_sigma "
            "--ckpt_every 1000000 --sample_every 2000 --log_every 20 --epochs 100 --track")
    tiny = ["--model", "Latte-T/2", "--latents_input_file", tiny_stage_files["latents"], "--resolution", "32",
            "--sequence_length", "2", "--latent_input_size", "8", "--max_steps", "2", "--sample_every", "2",
            "--sample_steps", "2", "--log_every", "1", "--num_workers", "0", "--output_dir", tmp_path, "--run_name", "rf"]
    res = run("train_dit.py", _fmt(seed, kl=tiny_vaes["kl"]) + tiny + ["--objective", "rf"], tmp_path)
    assert "learn_sigma turned off" in res.stdout
    ckpt = torch.load(tmp_path / "train_dit/rf/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["minisora"]["diffusion"]["objective"] == "rf" and ckpt["minisora"]["config"]["learn_sigma"] is False
    assert (tmp_path / "train_dit/rf/samples/sample_step0000002.mp4").exists()
    bad = run("train_dit.py", _fmt(seed, kl=tiny_vaes["kl"]) + tiny[:-2] + ["--run_name", "bad", "--sampler", "euler"],
              tmp_path, ok=False)
    assert bad.returncode != 0 and "rectified-flow" in bad.stderr
