"""Metric sanity: real-vs-real FMD small and real-vs-noise large; shuffled frames worsen the motion score;
legibility high on real frames and low on noise; evaluate.py runs and writes its JSON; FD maths; I3D path."""
import json

import numpy as np
import pytest
import torch

from conftest import run
from minisora.data import VideoDataset
from minisora.evaluation import (connected_components, extract_features, fd_with_ci, frechet_distance, standardizer,
                                 legibility_and_motion, to_float, train_digit_classifier, train_feature_net)


@pytest.fixture(scope="module")
def real(tiny_data):
    ds = VideoDataset("tiny", "train", resolution=None, sequence_length=16, data_dir=tiny_data, as_uint8=True)
    return np.stack([ds[i]["video"].permute(1, 2, 3, 0).numpy() for i in range(len(ds))])


@pytest.fixture(scope="module")
def classifier():
    net, acc = train_digit_classifier(epochs=4)
    assert acc > 0.95
    return net


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) * 2 + 1  # mean shift 1 per dim, std 2: FD = 3 + 3 * (1 + 4 - 2 * 2) = 6
    assert abs(frechet_distance(a, b) - 6.0) < 0.4
    assert frechet_distance(a, a) < 1e-6
    fd, lo, hi = fd_with_ci(a[:500], b[:500], n_boot=20)
    assert lo <= fd <= hi * 1.2 and lo > 3


def test_standardized_fmd_ignores_feature_scale():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 0.5
    scale = np.geomspace(1e-2, 1e2, 8)  # a feature net's units can live on any scale
    fd = frechet_distance(standardizer(b)(a), standardizer(b)(b))
    fd_scaled = frechet_distance(standardizer(b * scale)(a * scale), standardizer(b * scale)(b * scale))
    assert abs(fd - fd_scaled) < 1e-2 * fd and 8 * 0.25 * 0.7 < fd < 8 * 0.25 * 1.5
    assert abs(frechet_distance(a * scale, b * scale) - frechet_distance(a, b)) > 1  # raw FD is not invariant


def test_fmd_real_small_noise_large(tiny_data, real):
    ds = VideoDataset("tiny", "train", sequence_length=16, data_dir=tiny_data, as_uint8=True, random_clip=True)
    net = train_feature_net(ds, steps=30, batch_size=4)
    fa, fb = extract_features(net, to_float(real[:6])), extract_features(net, to_float(real[6:12]))
    noise = (np.random.default_rng(0).random(real[:6].shape) * 255).astype(np.uint8)
    fn = extract_features(net, to_float(noise))
    assert frechet_distance(fa, fb) * 5 < frechet_distance(fn, fb)


def test_feature_targets_say_where_digits_move():
    from minisora.evaluation import _targets
    meta = {"labels": [3], "num_frames": 8, "resolution": 64, "sizes": [16], "velocities": [[[4, 0]] * 8],
            "positions": [[[4 * t, 0] for t in range(8)]]}  # centre moves from x=8 to x=36 along the top row
    y = _targets(meta, start=0, frames=8)
    assert y[3] == 1 and y[:10].sum() == 1 and y[10] == 0.5
    where = y[12:].view(4, 4, 4)  # (time quarter, row, column)
    assert where[:, 1:].sum() == 0  # never below the top row
    assert where[0, 0].tolist() == [1, 0, 0, 0] and where[3, 0].tolist() == [0, 0, 1, 0]  # left, then right
    assert _targets(meta, start=4, frames=4)[12:].view(4, 4, 4)[0, 0].tolist() == [0, 1, 0, 0]


def test_bounce_fit_residuals():
    from minisora.evaluation import bounce_fit_residuals
    x = np.abs((np.arange(16) * 3.0 + 40) % 80 - 40) + 10  # bounces between 10 and 50 at 3 px/frame
    y = 20 + 1.5 * np.arange(16)                           # straight
    assert np.abs(bounce_fit_residuals(np.stack([y, x], 1))).max() < 1e-9
    jitter = np.stack([y, x + np.where(np.arange(16) % 2, 2.0, -2.0)], 1)
    assert np.sqrt((bounce_fit_residuals(jitter) ** 2).mean()) > 1.0  # back-and-forth is not a bounce


def test_legibility_and_motion_sanity(real, classifier):
    r = legibility_and_motion(real, classifier)
    rng = np.random.default_rng(0)
    shuffled = np.stack([v[rng.permutation(len(v))] for v in real])
    s = legibility_and_motion(shuffled, classifier)
    noise = (rng.random(real[:4].shape) * 255).astype(np.uint8)
    n = legibility_and_motion(noise, classifier)
    assert r["legibility"] > 0.5 and r["legibility"] > 2 * n["legibility"]
    assert 1 <= r["digits_per_frame"] <= 2.5  # the tiny set has 1-2 digits
    assert s["motion_residual_px"] > 1.5 * r["motion_residual_px"]  # shuffled frames: erratic motion


def test_connected_components():
    m = torch.zeros(1, 8, 8, dtype=torch.bool)
    m[0, 1:3, 1:3] = True
    m[0, 5:7, 4:8] = True
    m[0, 3, 3] = True  # touches the first blob diagonally: 8-connected
    lab = connected_components(m)
    assert len(torch.unique(lab[0])) == 3 and lab[0, 3, 3] == lab[0, 1, 1] and lab[0, 5, 4] != lab[0, 1, 1]


def test_evaluate_cli_and_i3d_path(tiny_data, tmp_path):
    class FakeI3D(torch.nn.Module):  # same call signature as StyleGAN-V's detector
        def forward(self, x, rescale: bool = False, resize: bool = True, return_features: bool = True):
            return x.mean((3, 4)).flatten(1)
    torch.jit.script(FakeI3D()).save(str(tmp_path / "i3d.pt"))
    videos = tmp_path / "gen"
    videos.mkdir()
    for i, f in enumerate(sorted((tiny_data / "tiny/val").glob("*.mp4"))):
        (videos / f"{i:03d}.mp4").write_bytes(f.read_bytes())
    out = run("evaluate.py", ["--dataset", "tiny", "--data_dir", tiny_data, "--videos", videos, "--num_real", 4,
                              "--num_videos", 4, "--feature_steps", 10, "--cache_dir", tmp_path / "cache", "--i3d",
                              tmp_path / "i3d.pt", "--output", tmp_path / "r.json"], tmp_path)
    res = json.loads((tmp_path / "r.json").read_text())["results"]
    assert {"real (val)", "generated", "real, frames shuffled", "noise"} <= set(res)
    assert res["generated"]["FMD"] < res["noise"]["FMD"] and "FVD" in res["noise"] and "| set |" in out.stdout
    assert (tmp_path / "cache/digit_cnn.pt").exists()


def test_demo_stages_run_end_to_end_tiny(tmp_path):
    out = run("demo.py", ["--workdir", tmp_path, "--tiny", "--num_train", 16, "--num_val", 8, "--minutes", 0.3,
                          "--num_videos", 2, "--eval_videos", 4], tmp_path, timeout=600)
    assert (tmp_path / "runs/demo/samples/grid.gif").exists() and (tmp_path / "runs/demo/results.json").exists()
    assert "| diffusion (ST-DiT) | generated |" in out.stdout and "finished in" in out.stdout
    stages = tmp_path / "runs/demo/stages"
    assert len(list(stages.glob("*.done"))) >= 6
    (stages / "4_5_diffusion.done").unlink()  # as if the diffusion run had been killed after a checkpoint
    again = run("demo.py", ["--workdir", tmp_path, "--tiny", "--num_train", 16, "--num_val", 8], tmp_path)
    assert again.stdout.count("already done") >= 5  # finished stages are skipped
    assert "4/5 diffusion: resuming the interrupted run from" in again.stdout and "--resume_from" in again.stdout
    assert (stages / "4_5_diffusion.done").exists()
