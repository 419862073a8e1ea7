"""One answer to a bad video in every stage: the up-front probe names each unreadable or too-short file with its
reason, then the stage stops (raise) or leaves them out (skip), the stage file's sidecar listing what was left out."""
import json
import warnings

import numpy as np
import pytest
import torch

from conftest import run
from minisora.data import VideoDataset, frames_to_tensor, to_model_range
from minisora.stagefile import load_stage
from minisora.video_io import BadVideosError, probe_videos, read_video, write_video

GOOD = ["00000.mp4", "00002.mp4", "00006.mp4"]
BAD = {"00001.mp4": "0 bytes", "00003.mp4": "not a video", "00004.mp4": "truncated: no moov atom",
       "00005.mp4": "3 frames < 8 needed"}


def clip(seed: int, n: int = 8) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 32, 32, 3)) * 255).astype(np.uint8)


@pytest.fixture
def bad_folder(tmp_path):
    """tmp/bad/train: three good 8-frame clips at 32² between an empty file, a text file, a truncated mp4 and a
    3-frame clip."""
    d = tmp_path / "bad" / "train"
    for i, name in enumerate(GOOD):
        write_video(d / name, clip(i))
    (d / "00001.mp4").write_bytes(b"")
    (d / "00003.mp4").write_text("not a video, only text\n" * 20)
    full = open(write_video(tmp_path / "whole.mp4", clip(9, 16)), "rb").read()
    assert full.rfind(b"moov") > len(full) // 2  # the writer puts the index last: cutting in half loses it
    (d / "00004.mp4").write_bytes(full[:len(full) // 2])
    assert b"moov" not in (d / "00004.mp4").read_bytes()
    write_video(d / "00005.mp4", clip(5, 3))
    return tmp_path / "bad"


@pytest.fixture(scope="module")
def tiny_sd_vae(tmp_path_factory):
    """A tiny diffusers AutoencoderKL (per-frame image VAE): loads in a blink, no training."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae") / "sd-vae-tiny"
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4).save_pretrained(path)
    return path


def test_probe_names_every_bad_file_with_its_reason(bad_folder):
    files = sorted((bad_folder / "train").iterdir())
    assert {p.name: reason for p, reason in probe_videos(files, min_frames=8)} == BAD
    assert probe_videos([bad_folder / "train/00000.mp4"], min_frames=9) == [(bad_folder / "train/00000.mp4",
                                                                             "8 frames < 9 needed")]


def test_dataset_raises_at_once_or_leaves_bad_files_out(bad_folder):
    with pytest.raises(BadVideosError) as e:
        VideoDataset(str(bad_folder), "train", resolution=32, sequence_length=8, on_error="raise")
    assert isinstance(e.value, ValueError) and sorted(p.name for p, _ in e.value.bad) == sorted(BAD)
    assert all(f"{name}: {reason}" in str(e.value) for name, reason in BAD.items())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = VideoDataset(str(bad_folder), "train", resolution=32, sequence_length=8)  # skip: the training default
    assert len(w) == len(BAD) and all("skipping bad video" in str(x.message) for x in w)
    assert [p.name for p in ds.files] == GOOD and len(ds) == 3 and [ds[i]["index"] for i in range(3)] == [0, 1, 2]
    assert {p.split("/")[-1]: r for p, r in ds.skipped.items()} == BAD


def test_latents_stops_naming_each_bad_file(bad_folder, tiny_sd_vae, tmp_path):
    args = ["--dataset", bad_folder, "--vae", tiny_sd_vae, "--resolution", 32, "--sequence_length", 8,
            "--num_workers", 0, "--output", tmp_path / "z.npy"]
    out = run("latents.py", args, tmp_path, ok=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr and "error: 4 of 7 videos" in out.stderr
    lines = out.stderr.splitlines()
    for name, reason in BAD.items():
        assert len([line for line in lines if name in line]) == 1 and f"{name}: {reason}" in out.stderr
    assert not any(g in out.stderr for g in GOOD) and not (tmp_path / "z.npy").exists()


def test_latents_skip_leaves_bad_files_out_and_lists_them(bad_folder, tiny_sd_vae, tmp_path):
    args = ["--dataset", bad_folder, "--vae", tiny_sd_vae, "--resolution", 32, "--sequence_length", 8,
            "--num_workers", 0, "--batch_size", 2, "--output", tmp_path / "z.npy", "--on_bad_video", "skip"]
    out = run("latents.py", args, tmp_path)
    assert "Traceback" not in out.stderr and all(f"{n}: {r}" in out.stderr for n, r in BAD.items())
    arr, meta = load_stage(tmp_path / "z.npy", expect_kind="latents")
    assert json.loads((tmp_path / "z.json").read_text()) == meta
    src = meta["source"]
    assert src["files"] == GOOD and src["num_videos"] == len(arr) == 3
    assert {s["file"]: s["reason"] for s in src["skipped"]} == BAD
    from minisora.resolve import load_vae
    vae = load_vae(str(tiny_sd_vae))
    for i, name in enumerate(src["files"]):  # row i is the i-th listed file
        x = to_model_range(frames_to_tensor(read_video(bad_folder / "train" / name, 0, 8), 32, as_uint8=True))
        assert np.allclose(arr[i], vae.encode(x.unsqueeze(0))[0].numpy(), atol=1e-4)
