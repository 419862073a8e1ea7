import json
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, TINY
from generate_flying_mnist import generate
from minisora.flying_mnist import DOWNLOAD_URLS, FlyingMNIST, FlyingMNISTConfig, load_digits
from minisora.resolve import require_online
from minisora.video_io import read_video, video_info


@pytest.fixture(scope="module")
def gen():
    images, labels = load_digits("bundled")
    return FlyingMNIST(FlyingMNISTConfig(**TINY, seed=1), images, labels)


def test_bundled_digits_are_real_mnist():
    images, labels = load_digits("bundled")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert sorted(set(labels.tolist())) == list(range(10))
    assert 0.1 < (images > 128).mean() < 0.3  # ink covers roughly a fifth of an MNIST digit


def test_defaults_reproduce_upstream_distribution():
    c = FlyingMNISTConfig().resolved()
    assert (c.resolution, c.num_frames, c.fps, c.min_digits, c.max_digits) == (512, 100, 10, 1, 8)
    assert (c.digit_size_min, c.digit_size_max, c.min_speed, c.max_speed) == (50, 119, 10, 39)
    small = FlyingMNISTConfig(resolution=64).resolved()  # sizes and speeds scale with the frame
    assert (small.digit_size_min, small.digit_size_max) == (6, 15)


def test_invalid_settings_fail_clearly():
    with pytest.raises(ValueError, match="do not fit"):
        FlyingMNISTConfig(resolution=64, digit_size_min=50, digit_size_max=80).resolved()
    with pytest.raises(ValueError, match="even"):
        FlyingMNISTConfig(resolution=63).resolved()


def test_trajectories_stay_inside_and_bounce(gen):
    for i in range(20):
        tr = gen.trajectory("train", i)
        pos, vel, sizes = tr["positions"], tr["velocities"], np.array(tr["sizes"])
        assert (pos >= 0).all() and (pos <= 64 - sizes[None, :, None]).all()  # per-digit walls
        assert TINY["min_digits"] <= len(sizes) <= TINY["max_digits"]
        speed = np.linalg.norm(vel, axis=-1)
        assert np.allclose(speed, speed[0])  # bouncing flips a component, never changes speed
        assert (speed >= 1.0 - 1e-6).all() and (speed <= 4.0 + 1e-6).all()


def _decoded_colour(gen, tmp_path, colour):
    tr = gen.trajectory("train", 0)
    for k in tr:
        if isinstance(tr[k], list):
            tr[k] = tr[k][:1]
    tr["positions"], tr["velocities"] = np.full_like(tr["positions"][:, :1], 6), tr["velocities"][:, :1]
    tr["sizes"], tr["colors"] = [52], [list(colour)]
    path = gen.write(tr, tmp_path / "c.mp4")
    frames = read_video(path)
    images, _ = load_digits("bundled")
    from PIL import Image
    grey = np.asarray(Image.fromarray(images[tr["mnist_index"][0]]).resize((52, 52), Image.LANCZOS))
    x, y = tr["positions"][0, 0]
    # strongly inked pixels whose 3x3 neighbourhood is inked too (away from chroma-subsampled edges)
    solid = grey >= 220
    inner = solid.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner &= np.roll(np.roll(solid, dy, 0), dx, 1)
    assert inner.sum() > 10
    expected = grey[inner][:, None] / 255.0 * np.array(colour)[None]
    return np.median(frames[0, y:y + 52, x:x + 52][inner] - expected, axis=0)


@pytest.mark.parametrize("colour", [(255, 43, 43), (43, 255, 43), (43, 43, 255), (234, 149, 64)])
def test_colours_survive_mp4_round_trip(gen, tmp_path, colour):
    err = _decoded_colour(gen, tmp_path, colour)
    assert np.abs(err).max() <= 8, (err, colour)  # RGB order kept, no R/B swap


def test_metadata_matches_pixels(tmp_path):
    cfg = FlyingMNISTConfig(**{**TINY, "max_digits": 1}, seed=5)
    generate(cfg, tmp_path / "one", {"train": 4}, workers=1, progress=False)
    for line in open(tmp_path / "one/train/metadata.jsonl"):
        r = json.loads(line)
        frames = read_video(tmp_path / "one/train" / r["file"])
        assert len(frames) == r["num_frames"] == 16
        s = r["sizes"][0]
        for t in range(16):
            x, y = r["positions"][0][t]
            ink = frames[t].max(-1) > 60
            ys, xs = np.nonzero(ink)
            assert len(xs) > 0, "digit not visible"
            # the visible digit lies inside its metadata box (1 px slack for codec blur)
            assert xs.min() >= x - 1 and xs.max() <= x + s and ys.min() >= y - 1 and ys.max() <= y + s
            assert ink[y:y + s, x:x + s].sum() >= 0.9 * ink.sum()
        assert r["labels"][0] in range(10) and len(r["colors"][0]) == 3


def test_same_seed_same_videos_whatever_workers(tmp_path):
    cfg = FlyingMNISTConfig(**TINY, seed=7)
    generate(cfg, tmp_path / "a", {"train": 6, "val": 2}, workers=1, progress=False)
    generate(cfg, tmp_path / "b", {"train": 6, "val": 2}, workers=2, progress=False)
    for split in ("train", "val"):
        for f in sorted((tmp_path / "a" / split).iterdir()):
            assert f.read_bytes() == (tmp_path / "b" / split / f.name).read_bytes(), f
    other = FlyingMNISTConfig(**TINY, seed=8)
    generate(other, tmp_path / "c", {"train": 1}, workers=1, progress=False)
    assert (tmp_path / "c/train/00000.mp4").read_bytes() != (tmp_path / "a/train/00000.mp4").read_bytes()


def test_cli_generates_playable_videos_and_resumes(tmp_path):
    cmd = [sys.executable, str(ROOT / "generate_flying_mnist.py"), "--data_dir", str(tmp_path), "--name", "cli",
           "--resolution", "32", "--num_frames", "8", "--max_digits", "2", "--num_train", "5", "--num_val", "2",
           "--workers", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "wrote {'train': 5, 'val': 2}" in out.stdout
    info = video_info(tmp_path / "cli/train/00004.mp4")
    assert (info.num_frames, info.height, info.width, info.fps) == (8, 32, 32, 10.0)
    assert len((tmp_path / "cli/val/metadata.jsonl").read_text().splitlines()) == 2
    first = (tmp_path / "cli/train/00000.mp4").stat().st_mtime_ns
    subprocess.run(cmd, capture_output=True, text=True, check=True)  # resume: finished videos are kept
    assert (tmp_path / "cli/train/00000.mp4").stat().st_mtime_ns == first
    bad = subprocess.run(cmd[:-2] + ["--seed", "9"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--overwrite" in bad.stderr


def test_download_fails_fast_offline():
    try:
        require_online(DOWNLOAD_URLS["11k"], "probe", "none", timeout=3)
        pytest.skip("machine is online: the offline path cannot be exercised")
    except ConnectionError:
        pass
    t = time.time()
    out = subprocess.run([sys.executable, str(ROOT / "generate_flying_mnist.py"), "--download", "11k"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and time.time() - t < 20
    assert "generate_flying_mnist.py" in out.stderr and "offline" in out.stderr
