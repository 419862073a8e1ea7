import json

import numpy as np
import pytest
import torch

from conftest import run
from minisora.stagefile import StageWriter, load_stage, token_dtype


def test_project_vae_latents_round_trip(tiny_data, tiny_vaes, tmp_path):
    args = ["--dataset", "tiny", "--data_dir", str(tiny_data), "--batch_size", "1", "--vae", str(tiny_vaes["kl"]),
            "--resolution", "32", "--sequence_length", "8", "--num_workers", "0", "--decode", "2"]
    out = run("latents.py", args, tmp_path)
    f = tiny_data / "latents/tiny__kl_latents_8frames_train.npy"  # upstream's naming
    arr, meta = load_stage(f, expect_kind="latents")
    assert arr.shape == (12, 4, 2, 8, 8) and arr.dtype == np.float32
    assert meta["source"]["files"][:2] == ["00000.mp4", "00001.mp4"] and meta["vae"]["temporal_stride"] == 4
    assert len(meta["channel_mean"]) == 4 and all(s > 0 for s in meta["channel_std"])
    assert "PSNR" in out.stdout and len(list(f.with_name(f.stem + "_decoded").glob("*.mp4"))) == 2
    from minisora.resolve import load_vae
    from minisora.data import VideoDataset, to_model_range
    vae = load_vae(str(tiny_vaes["kl"]))
    ds = VideoDataset("tiny", resolution=32, sequence_length=8, data_dir=tiny_data, as_uint8=True)
    z = vae.encode(to_model_range(ds[5]["video"]).unsqueeze(0))
    assert np.allclose(arr[5], z[0].numpy(), atol=1e-5)  # row i is video i, deterministic (posterior mean)


def test_tokens_dtype_range_and_decode(tiny_data, tiny_vaes, tmp_path):
    out_file = tmp_path / "tok.npy"
    out = run("tokenize_videos.py", ["--dataset", "tiny", "--data_dir", str(tiny_data), "--batch_size", "8",
                                     "--vae", str(tiny_vaes["vq"]), "--resolution", "32", "--sequence_length", "8",
                                     "--num_workers", "0", "--output", str(out_file), "--decode", "1"], tmp_path)
    arr, meta = load_stage(out_file, expect_kind="tokens")
    assert arr.shape == (12, 2, 8, 8) and arr.dtype == np.uint16 and int(arr.max()) < 300  # K=300 -> uint16
    assert meta["n_codes"] == 300 and "PSNR" in out.stdout
    bad = run("tokenize_videos.py", ["--dataset", "tiny", "--data_dir", str(tiny_data), "--vae", str(tiny_vaes["kl"]),
                                     "--resolution", "32", "--sequence_length", "8"], tmp_path, ok=False)
    assert bad.returncode != 0 and "does not quantize" in bad.stderr
    assert token_dtype(256) == np.uint8 and token_dtype(257) == np.uint16 and token_dtype(5120) == np.uint16


def test_tokenize_with_replicate_padding_and_merged_codes_names_the_changed_tokenizer(tiny_data, tiny_vaes, tmp_path):
    from minisora.resolve import load_vae
    out_file = tmp_path / "tok.npy"
    out = run("tokenize_videos.py", ["--dataset", "tiny", "--data_dir", str(tiny_data), "--batch_size", "8",
                                     "--vae", str(tiny_vaes["vq"]), "--resolution", "32", "--sequence_length", "8",
                                     "--num_workers", "0", "--output", str(out_file), "--decode", "1",
                                     "--temporal_padding", "replicate", "--merge_codes", "0.5"], tmp_path)
    arr, meta = load_stage(out_file, expect_kind="tokens")
    derived = tmp_path / "tok.vae.ckpt"
    assert meta["vae"]["reference"] == str(derived) and meta["vae"]["config"]["temporal_padding"] == "replicate"
    vae, orig = load_vae(str(derived)), load_vae(str(tiny_vaes["vq"]))
    active = vae.module.quantizer.active
    assert vae.config["temporal_padding"] == "replicate" and orig.config["temporal_padding"] == "zeros"
    assert 0 < int(active.sum()) < 300 and active[np.unique(arr)].all()  # only codes left active are used
    assert "merged" in out.stdout and "PSNR" in out.stdout
    sd, so = vae.module.state_dict(), orig.module.state_dict()
    assert all(torch.equal(sd[k], so[k]) for k in so if k != "quantizer.active")  # no weight changed
    bad = run("tokenize_videos.py", ["--dataset", "tiny", "--data_dir", str(tiny_data), "--vae", str(tiny_vaes["kl"]),
                                     "--resolution", "32", "--sequence_length", "8", "--merge_codes", "0.5"],
              tmp_path, ok=False)
    assert bad.returncode != 0 and "does not quantize" in bad.stderr


def test_interrupt_and_resume_gives_identical_file(tmp_path):
    rows = np.random.default_rng(0).normal(size=(10, 2, 3)).astype(np.float32)
    meta = {"kind": "latents", "source": {"a": 1}, "vae": {"b": 2}}
    full = StageWriter(tmp_path / "full.npy", rows.shape, np.float32, meta)
    for i in range(0, 10, 3):
        full.write(rows[i:i + 3])
    full.finish()
    w = StageWriter(tmp_path / "cut.npy", rows.shape, np.float32, meta)
    w.write(rows[:4])
    del w  # "killed" after 4 rows
    assert (tmp_path / "cut.partial.npy").exists() and not (tmp_path / "cut.npy").exists()
    with pytest.raises(FileNotFoundError, match="resume"):
        load_stage(tmp_path / "cut.npy")
    w = StageWriter(tmp_path / "cut.npy", rows.shape, np.float32, meta)
    assert w.rows_done == 4
    w.write(rows[4:])
    w.finish()
    a, ma = load_stage(tmp_path / "full.npy")
    b, mb = load_stage(tmp_path / "cut.npy")
    assert np.array_equal(a, b) and ma["channel_mean"] == mb["channel_mean"]
    other = StageWriter(tmp_path / "x.npy", rows.shape, np.float32, {**meta, "vae": {"b": 3}})
    assert other.rows_done == 0  # a partial file made with other settings is not reused


def test_latents_script_resumes_after_interrupt(tiny_data, tiny_vaes, tmp_path, monkeypatch, capsys):
    import latents
    import minisora.encode as encode
    args = ["--dataset", "tiny", "--data_dir", str(tiny_data), "--batch_size", "1", "--vae", str(tiny_vaes["kl"]),
            "--resolution", "32", "--sequence_length", "8", "--num_workers", "0"]
    latents.main(args + ["--output", str(tmp_path / "ref.npy")])
    target = tmp_path / "res.npy"

    class Interrupted(encode.StageWriter):  # a Ctrl-C after the third row
        def write(self, rows):
            if self.rows_done >= 3:
                raise KeyboardInterrupt
            super().write(rows)

    monkeypatch.setattr(encode, "StageWriter", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        latents.main(args + ["--output", str(target)])
    monkeypatch.undo()
    prog = tmp_path / "res.partial.json"
    assert not target.exists() and json.loads(prog.read_text())["rows_done"] == 3
    capsys.readouterr()
    latents.main(args + ["--output", str(target)])
    assert "resuming" in capsys.readouterr().out and not prog.exists()
    assert np.array_equal(np.load(target), np.load(tmp_path / "ref.npy"))


def test_sidecar_mismatch_and_missing_sidecar(tmp_path):
    np.save(tmp_path / "up.npy", np.zeros((3, 4, 2, 8, 8), np.float32))
    with pytest.warns(UserWarning, match="no sidecar"):
        arr, meta = load_stage(tmp_path / "up.npy")
    assert meta["kind"] == "latents" and meta["inferred"]
    np.save(tmp_path / "tok.npy", np.zeros((3, 2, 8, 8), np.int64))
    with pytest.warns(UserWarning):
        assert load_stage(tmp_path / "tok.npy")[1]["kind"] == "tokens"
    (tmp_path / "up.json").write_text(json.dumps({"kind": "latents", "shape": [3, 4, 2, 8, 9], "dtype": "float32"}))
    with pytest.raises(ValueError, match=r"\[3, 4, 2, 8, 9\]"):
        load_stage(tmp_path / "up.npy")


def test_sd_vae_path_per_frame_with_scaling(tiny_data, tmp_path):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  scaling_factor=0.18215).save_pretrained(tmp_path / "sd-vae-tiny")
    run("latents.py", ["--dataset", "tiny", "--data_dir", str(tiny_data), "--batch_size", "1",
                       "--vae", str(tmp_path / "sd-vae-tiny"), "--resolution", "32", "--sequence_length", "4",
                       "--num_workers", "0", "--max_videos", "3", "--decode", "1"], tmp_path)
    arr, meta = load_stage(tiny_data / "latents/tiny__sd-vae-tiny_latents_4frames_train.npy")
    assert arr.shape == (3, 4, 4, 16, 16) and meta["scaling_factor"] == 0.18215 and meta["vae"]["kind"] == "diffusers"


def test_tokens_file_needs_the_matching_codebook(tmp_path):
    from types import SimpleNamespace

    from minisora.stagefile import check_vae_matches
    meta = {"kind": "tokens", "n_codes": 5120, "shape": [2, 2, 4, 4],
            "vae": {"reference": "a", "latent_channels": 4, "temporal_stride": 4, "spatial_stride": 4}}
    vq = SimpleNamespace(reference="b", name="b", quantize=True, n_codes=1024, latent_channels=4, temporal_stride=4,
                         spatial_stride=4)
    with pytest.raises(ValueError, match="5120-entry codebook.*1024"):
        check_vae_matches(meta, vq, "tok.npy")
    with pytest.raises(ValueError, match="does not quantize"):
        check_vae_matches(meta, SimpleNamespace(**{**vars(vq), "quantize": False, "n_codes": None}), "tok.npy")
    check_vae_matches(meta, SimpleNamespace(**{**vars(vq), "n_codes": 5120, "name": "a"}), "tok.npy")  # matches


def test_upstream_style_checkpoints_are_refused_clearly(tmp_path, tiny_data):
    import argparse

    from minisora.resolve import load_vae
    torch.save({"state_dict": {}, "hyper_parameters": {"args": argparse.Namespace(n_codes=5120)}}, tmp_path / "up.ckpt")
    with pytest.raises(ValueError, match="not a MiniSora checkpoint.*pickled.*train_vqvae.py"):
        load_vae(str(tmp_path / "up.ckpt"))
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="no 'minisora' entry"):
        load_vae(str(tmp_path / "plain.ckpt"))
    out = run("latents.py", ["--dataset", "tiny", "--data_dir", tiny_data, "--vae", tmp_path / "up.ckpt"], tmp_path, ok=False)
    assert out.returncode != 0 and "not a MiniSora checkpoint" in out.stderr and "Traceback" not in out.stderr
