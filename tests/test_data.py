import os
import subprocess
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import ROOT, run
from minisora.data import VideoDataset, collate_videos, frames_to_tensor, to_model_range
from minisora.video_io import BadVideosError, VideoReadError, available_backends, read_video, to_uint8_frames, write_gif, write_video


def test_dataset_shapes_range_and_order(tiny_data):
    ds = VideoDataset("tiny", "train", resolution=32, sequence_length=8, data_dir=tiny_data)
    assert [p.name for p in ds.files] == sorted(p.name for p in ds.files) and len(ds) == 12
    x = ds[3]["video"]
    assert x.shape == (3, 8, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9  # black background maps to -1
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    assert batch["video"].shape == (4, 3, 8, 32, 32) and batch["index"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("workers", [0, 1])
def test_collate_videos_matches_default_collate(tiny_data, workers):
    ds = VideoDataset("tiny", "train", resolution=32, sequence_length=8, data_dir=tiny_data, as_uint8=True)
    ref = next(iter(DataLoader(ds, batch_size=3)))
    got = next(iter(DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=collate_videos)))
    v = got["video"]
    assert v.shape == ref["video"].shape == (3, 3, 8, 32, 32) and v.dtype == torch.uint8
    assert v.is_contiguous(memory_format=torch.channels_last_3d) and not v.is_contiguous()  # frames stay interleaved
    assert torch.equal(v, ref["video"]) and got["index"].tolist() == ref["index"].tolist() == [0, 1, 2]
    x = to_model_range(v)
    assert x.is_contiguous() and torch.equal(x, to_model_range(ref["video"]))
    # items that are not interleaved clips (or other datasets' items) fall back to default_collate
    planar = [{"video": torch.zeros(3, 2, 4, 4, dtype=torch.uint8), "index": i} for i in range(2)]
    assert collate_videos(planar)["video"].is_contiguous()
    assert collate_videos([{"latents": torch.ones(2)}, {"latents": torch.ones(2)}])["latents"].shape == (2, 2)


def test_clips_per_video_stride_and_random_start(tiny_data):
    ds = VideoDataset("tiny", "train", resolution=64, sequence_length=4, frame_stride=2, num_clips_per_video=3,
                      data_dir=tiny_data)
    assert len(ds) == 36 and ds.span == 7
    assert [ds[i]["start"] for i in range(3)] == [0, 4, 9]  # evenly spaced over 16 - 7 + 1 starts
    full = read_video(ds.files[0])
    clip = to_uint8_frames(ds[1]["video"])
    assert np.abs(clip.astype(int) - full[4:11:2].astype(int)).max() <= 1  # exact frames, exact order
    rnd = VideoDataset("tiny", "train", sequence_length=4, random_clip=True, data_dir=tiny_data)
    starts = {rnd[0]["start"] for _ in range(300)}
    assert starts == set(range(13))  # every valid start, the last one included


def test_metadata_labels(tiny_data):
    ds = VideoDataset("tiny", "val", sequence_length=4, return_metadata=True, data_dir=tiny_data)
    import json
    meta = [json.loads(line) for line in open(tiny_data / "tiny/val/metadata.jsonl")]
    for i, r in enumerate(meta):
        item = ds[i]
        assert item["num_digits"] == len(r["labels"])
        assert set(torch.nonzero(item["labels"]).flatten().tolist()) == set(r["labels"])


def test_label_prior_counts_digit_sets_and_draws_them_as_often():
    """label_prior keeps each training digit set (as a set: order and repeats do not count) with its count;
    draw_label_sets draws them in those proportions, the same draws for the same seed."""
    from minisora.data import draw_label_sets, label_prior
    prior = label_prior([[3, 7], [7, 3], [1], [1, 1], [1], [5]])
    assert prior == {"sets": [[1], [3, 7], [5]], "counts": [3, 2, 1]} and label_prior(None) is None
    drawn = draw_label_sets(prior, 6000, seed=1)
    share = {tuple(s): drawn.count(s) / 6000 for s in prior["sets"]}
    assert share == pytest.approx({(1,): 0.5, (3, 7): 1 / 3, (5,): 1 / 6}, abs=0.03)
    assert draw_label_sets(prior, 20, seed=1) == drawn[:20] and draw_label_sets(prior, 20, seed=2) != drawn[:20]


def test_resize_and_crop():
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    frames[:, :, 30:] = 255
    x = frames_to_tensor(frames, 20)
    assert x.shape == (3, 2, 20, 20)
    assert torch.allclose(x[:, :, :, :8], torch.tensor(-1.0)) and torch.allclose(x[:, :, :, 12:], torch.tensor(1.0))


def test_missing_data_dir_says_how_to_get_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="generate_flying_mnist.py"):
        VideoDataset("nothing_here", data_dir=tmp_path)


def _bad_dataset(tmp_path, tiny_data):
    d = tmp_path / "bad" / "train"
    d.mkdir(parents=True)
    for i in range(3):
        (d / f"{i:05d}.mp4").write_bytes((tiny_data / f"tiny/train/{i:05d}.mp4").read_bytes())
    (d / "00001.mp4").write_bytes(b"")  # empty
    (d / "00003.mp4").write_bytes(os.urandom(3000))  # corrupt
    write_video(d / "00004.mp4", np.zeros((3, 64, 64, 3), np.uint8))  # too short
    return tmp_path


def test_bad_videos_named_up_front_then_skipped_or_raised(tmp_path, tiny_data):
    root = _bad_dataset(tmp_path, tiny_data)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = VideoDataset("bad", sequence_length=8, data_dir=root)
    assert [p.name for p in ds.files] == ["00000.mp4", "00002.mp4"] and [ds[i]["index"] for i in range(len(ds))] == [0, 1]
    assert {"00001.mp4", "00003.mp4", "00004.mp4"} == {os.path.basename(s) for s in ds.skipped}
    msgs = [str(x.message) for x in w]
    assert len(msgs) == 3 and all(m.startswith("skipping bad video") for m in msgs)
    assert "00001.mp4: 0 bytes" in msgs[0] and "00004.mp4: 3 frames < 8 needed" in msgs[2]
    with pytest.raises(BadVideosError, match="3 of 5 videos") as e:
        VideoDataset("bad", sequence_length=8, data_dir=root, on_error="raise")
    assert [p.name for p, _ in e.value.bad] == ["00001.mp4", "00003.mp4", "00004.mp4"]
    # a file that passes the probe but fails when read (here: emptied afterwards) is skipped or raised at read time
    strict = VideoDataset("bad", sequence_length=8, data_dir=root, on_error="raise", max_videos=1)
    (root / "bad/train/00000.mp4").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipping bad video.*empty"):
        assert ds[0]["index"] == 1
    with pytest.raises(VideoReadError, match="empty"):
        strict[0]


def test_training_script_on_bad_videos_and_missing_data(tmp_path, tiny_data):
    root = _bad_dataset(tmp_path, tiny_data)
    (root / "bad" / "val").symlink_to(root / "bad" / "train")
    args = ["--dataset", "bad", "--data_dir", root, "--resolution", 32, "--sequence_length", 8, "--channels", 8, 8, 8,
            "--epochs", 1, "--batch_size", 5, "--num_workers", 0, "--output_dir", tmp_path / "runs", "--run_name", "r"]
    skip = run("train_vqvae.py", args + ["--network_variant", "s4t4_b"], tmp_path)
    assert "skipping bad video" in skip.stderr and (tmp_path / "runs/train_vqvae/r/checkpoints/last.ckpt").exists()
    strict = run("train_vqvae.py", args + ["--network_variant", "s4t4_b", "--on_bad_video", "raise", "--run_name", "strict"],
                 tmp_path, ok=False)
    assert strict.returncode != 0 and "error: 3 of 5 videos" in strict.stderr and "Traceback" not in strict.stderr
    missing = run("train_vqvae.py", ["--dataset", "nothing_here", "--data_dir", root], tmp_path, ok=False)
    assert missing.returncode != 0 and "generate_flying_mnist.py" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.skipif("decord" not in available_backends(), reason="decord not installed")
def test_decord_and_pyav_agree(tiny_data):
    f = tiny_data / "tiny/train/00002.mp4"
    a, b = read_video(f, 3, 5, 2, backend="decord"), read_video(f, 3, 5, 2, backend="pyav")
    assert a.shape == b.shape == (5, 64, 64, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0


def test_gif_and_mp4_writers(tmp_path):
    frames = (np.random.default_rng(0).random((6, 32, 48, 3)) * 255).astype(np.uint8)
    write_gif(tmp_path / "a.gif", frames, fps=5)
    import imageio.v3 as iio
    assert iio.imread(tmp_path / "a.gif").shape[:3] == (6, 32, 48)
    write_video(tmp_path / "a.mp4", frames)
    assert read_video(tmp_path / "a.mp4").shape == (6, 32, 48, 3)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]  # atomic writes leave no temp files


def test_train_sh_falls_back_to_venv_from_any_directory(tmp_path):
    if not (ROOT / ".venv/bin/python").exists():
        pytest.skip("no .venv (tests not started through train.sh)")
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"}
    env.pop("MINISORA_NO_DOCKER", None)
    for script in ("train.sh", "examples/video_gen/minisora/train.sh"):
        out = subprocess.run(["bash", str(ROOT / script), "python", "-c", "import sys, os; print(sys.prefix); print(os.getcwd())"],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        prefix, cwd = out.stdout.split()
        assert prefix == str(ROOT / ".venv") and cwd == str(ROOT)
    usage = subprocess.run(["bash", str(ROOT / "train.sh")], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "usage" in usage.stderr
