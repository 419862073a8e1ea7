"""Metric sanity: real-vs-real FMD small and real-vs-noise large, and the floor at the set's size; motion
(gaps split tracks, frozen and shuffled videos lose); colour (grey and one-hue copies lose); reconstruction
colour error; prompt accuracy; legibility high on real frames and low on noise; evaluate.py runs (videos,
I3D, VAE reconstructions, prompted samples, continuations) and writes its JSON, and refuses, in one line, the flag
combinations it cannot serve; FD maths."""
import json
import types

import numpy as np
import pytest
import torch

from conftest import run
from minisora.data import VideoDataset, load_labels
from minisora.evaluation import (FMD, colour_error, connected_components, detection_metrics, extract_features,
                                 fd_with_ci, frechet_distance, ink_kept, prompt_accuracy, prompt_scores, standardizer, to_float,
                                 train_digit_classifier, train_feature_net, video_metrics)

METRICS = {"legibility", "legible_per_frame", "digits_per_frame", "mean_speed_px", "motion_residual_px",
           "identity_switch_rate", "chroma", "ink_kept", "hue_consistency", "hue_spread", "legible_by_frame"}


def tiny_split(tiny_data, split):
    ds = VideoDataset("tiny", split, resolution=None, sequence_length=16, data_dir=tiny_data, as_uint8=True)
    videos = np.stack([ds[i]["video"].permute(1, 2, 3, 0).numpy() for i in range(len(ds))])
    return videos, load_labels(ds.dir, [f.relative_to(ds.dir).as_posix() for f in ds.files])


@pytest.fixture(scope="module")
def real(tiny_data):
    return tiny_split(tiny_data, "train")[0]


@pytest.fixture(scope="module")
def classifier():
    net, acc = train_digit_classifier(epochs=4)  # evaluate.py trains 8: held-out 0.96 instead of 0.945 (rendered
    assert acc > 0.93                           # as in the frames), the same 11 of 12 tiny videos read right
    return net


@pytest.fixture(scope="module")
def real_metrics(real, classifier):
    return video_metrics(real, classifier)


@pytest.fixture(scope="module")
def feature_net(tiny_data):
    ds = VideoDataset("tiny", "train", sequence_length=16, data_dir=tiny_data, as_uint8=True, random_clip=True)
    return train_feature_net(ds, steps=30, batch_size=4)


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


def test_fmd_real_small_noise_large(real, feature_net):
    fa, fb = extract_features(feature_net, to_float(real[:6])), extract_features(feature_net, to_float(real[6:12]))
    noise = (np.random.default_rng(0).random(real[:6].shape) * 255).astype(np.uint8)
    fn = extract_features(feature_net, to_float(noise))
    assert frechet_distance(fa, fb) * 5 < frechet_distance(fn, fb)


def test_motion_coherence_tells_smooth_from_shuffled_and_still(real):
    from minisora.evaluation import motion_coherence
    rng = np.random.default_rng(0)
    shuffled = np.stack([v[rng.permutation(len(v))] for v in real])
    frozen = np.repeat(real[:, :1], real.shape[1], axis=1)
    r, s, f = (motion_coherence(to_float(v)) for v in (real, shuffled, frozen))
    assert r[:, 0].max() < -0.3 and s[:, 0].mean() > -0.15 and f[:, 0].abs().max() < 1e-6  # 1-frame / 2-frame change
    assert f[:, 1].max() < r[:, 1].min() - 2  # nothing changes


def test_fmd_floor_has_the_set_size(tiny_data, real, feature_net):
    held_out = np.concatenate([tiny_split(tiny_data, "val")[0], real[6:8]])
    fmd = FMD(feature_net, real[:6], held_out)
    r = fmd(held_out[:4])
    assert r["FMD_n"] == 4 and r["FMD"] == pytest.approx(r["FMD_floor"])  # the floor is real-vs-real at that size
    assert fmd.floor(6) != r["FMD_floor"]  # ... and depends on the size
    noise = fmd((np.random.default_rng(0).random(held_out[:4].shape) * 255).astype(np.uint8))
    assert noise["FMD_floor"] == r["FMD_floor"] and noise["FMD"] > 3 * noise["FMD_floor"]
    with pytest.raises(ValueError):
        fmd.floor(7)  # more than the held-out videos: no floor of that size


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


def test_missed_frame_ends_a_track():
    """A constant-velocity digit missed in frame 7: two perfect tracks, not one bridging the gap."""
    red = (250.0, 30.0, 20.0)
    dets = [[(10 + 2.0 * t, 5 + 1.5 * t, 3, 1.0, 40, red)] if t != 7 else [] for t in range(16)]
    r = detection_metrics([dets], size=64)
    assert r["motion_residual_px"] < 1e-6 and r["mean_speed_px"] == pytest.approx(2.5)
    assert r["digits_per_frame"] == r["legible_per_frame"] == 15 / 16 and r["hue_consistency"] == 1
    assert r["legible_by_frame"] == [1.0] * 7 + [0.0] + [1.0] * 8  # where the digit was missed
    dets[7] = [(10 + 2.0 * 7 + 3, 5 + 1.5 * 7, 3, 1.0, 40, red)]  # seen, but 3 px off its path: residual > 0
    assert detection_metrics([dets], size=64)["motion_residual_px"] > 0.3


def test_video_metrics_sanity(real, classifier, real_metrics):
    r = real_metrics
    rng = np.random.default_rng(0)
    shuffled = np.stack([v[rng.permutation(len(v))] for v in real])
    s = video_metrics(shuffled, classifier)
    noise = (rng.random(real[:4].shape) * 255).astype(np.uint8)
    n = video_metrics(noise, classifier)
    assert set(r) == METRICS
    assert r["legibility"] > 0.5 and r["legibility"] > 2 * n["legibility"]
    assert r["legible_per_frame"] > 0.6 and n["legible_per_frame"] < 0.5 * r["legible_per_frame"]
    assert 1 <= r["digits_per_frame"] <= 2.5  # the tiny set has 1-2 digits
    assert s["motion_residual_px"] > 1.5 * r["motion_residual_px"]  # shuffled frames: erratic motion
    assert r["identity_switch_rate"] < 0.1


def test_frozen_videos_lose_speed(real, classifier, real_metrics):
    frozen = np.repeat(real[:, :1], real.shape[1], axis=1)  # first frame repeated: perfectly still digits
    f = video_metrics(frozen, classifier)
    assert real_metrics["mean_speed_px"] > 1 and f["mean_speed_px"] < 0.05
    assert f["motion_residual_px"] < 0.05  # a still digit fits constant velocity perfectly: hence the speed metric


def test_fading_digits_lose_ink(real, real_metrics):
    """ink_kept: real digits keep their foreground (~1), digits that fade out over the clip (a too-cool sampler's
    erosion) lose it, still ones keep exactly all of it."""
    t = real.shape[1]
    fade = (real * np.linspace(1, 0, t)[None, :, None, None, None]).round().astype(np.uint8)
    assert 0.7 < real_metrics["ink_kept"] < 1.3 and ink_kept(fade) < 0.3
    assert ink_kept(np.repeat(real[:, :1], t, axis=1)) == 1.0


def test_grey_and_one_hue_copies_lose_colour(real, classifier, real_metrics):
    r = real_metrics
    grey = np.repeat(real.max(-1, keepdims=True), 3, -1)
    g = video_metrics(grey, classifier)
    one_hue = (real.max(-1, keepdims=True) / 255.0 * np.array([255, 90, 30])).round().astype(np.uint8)  # all orange
    o = video_metrics(one_hue, classifier)
    assert r["chroma"] > 40 and g["chroma"] < 1 and o["chroma"] > 40
    assert r["hue_consistency"] > 0.7 and g["hue_consistency"] == 0 and o["hue_consistency"] > 0.7
    assert r["hue_spread"] > 0.3 and g["hue_spread"] == 0 and o["hue_spread"] < 0.01
    assert g["legibility"] == pytest.approx(r["legibility"], abs=0.05)  # colour metrics only see colour


def test_colour_error(real):
    assert colour_error(real, real) == 0
    one_hue = (real.max(-1, keepdims=True) / 255.0 * np.array([255, 255, 0])).round().astype(np.uint8)  # all yellow
    assert colour_error(real, one_hue) > 25
    dimmer = (real * 0.9).astype(np.uint8)
    assert 2 < colour_error(real, dimmer) < 25


def test_prompt_accuracy(real, tiny_data, classifier):
    labels = tiny_split(tiny_data, "train")[1]
    wrong = labels[1:] + labels[:1]  # every video prompted with the next video's digits
    assert sum(set(a) == set(b) for a, b in zip(labels, wrong)) <= 1
    assert prompt_accuracy(real, labels, classifier) >= 0.8
    assert prompt_accuracy(real, wrong, classifier) <= 0.3
    assert prompt_accuracy(real[:1], [labels[0] + [(max(labels[0]) + 1) % 10]], classifier) == 0  # a missing digit
    # why a video misses: a prompted digit not read (missed), a digit read that was not prompted (unprompted)
    read = prompt_scores(real, labels, classifier)
    assert read["prompt_accuracy"] == prompt_accuracy(real, labels, classifier) and read["prompt_unprompted"] <= 0.2
    i = next(i for i in range(len(real)) if prompt_accuracy(real[i:i + 1], labels[i:i + 1], classifier) == 1)
    other = next(d for d in range(10) if d not in labels[i])  # a digit not in video i
    assert prompt_scores(real[i:i + 1], [labels[i] + [other]], classifier) == \
        {"prompt_accuracy": 0.0, "prompt_missed": 1.0, "prompt_unprompted": 0.0}
    assert prompt_scores(real[i:i + 1], [[other]], classifier) == \
        {"prompt_accuracy": 0.0, "prompt_missed": 1.0, "prompt_unprompted": 1.0}
    assert prompt_scores(real[i:i + 1], [labels[i][:1]], classifier)["prompt_unprompted"] == float(len(labels[i]) > 1)


def test_connected_components():
    m = torch.zeros(1, 8, 8, dtype=torch.bool)
    m[0, 1:3, 1:3] = True
    m[0, 5:7, 4:8] = True
    m[0, 3, 3] = True  # touches the first blob diagonally: 8-connected
    lab = connected_components(m)
    assert len(torch.unique(lab[0])) == 3 and lab[0, 3, 3] == lab[0, 1, 1] and lab[0, 5, 4] != lab[0, 1, 1]


def seed_cache(cache, classifier):
    """The digit classifier as evaluate.py caches it (training it again in every run would cost a minute)."""
    cache.mkdir()
    torch.save(classifier.state_dict(), cache / "digit_cnn_v2.pt")


def test_evaluate_cli_and_i3d_path(tiny_data, tmp_path, classifier):
    seed_cache(tmp_path / "cache", classifier)

    class FakeI3D(torch.nn.Module):  # same call signature as StyleGAN-V's detector
        def forward(self, x, rescale: bool = False, resize: bool = True, return_features: bool = True):
            return x.mean((3, 4)).flatten(1)
    torch.jit.script(FakeI3D()).save(str(tmp_path / "i3d.pt"))
    videos = tmp_path / "gen"
    videos.mkdir()
    held_out = sorted((tiny_data / "tiny/val").glob("*.mp4")) + sorted((tiny_data / "tiny/train").glob("*.mp4"))[8:]
    for i, f in enumerate(held_out):  # evaluate.py's 8 held-out real videos: 4 val, then train after the 8 reference
        (videos / f"{i:03d}.mp4").write_bytes(f.read_bytes())
    out = run("evaluate.py", ["--dataset", "tiny", "--data_dir", tiny_data, "--videos", videos, "--num_real", 4,
                              "--feature_steps", 10, "--cache_dir", tmp_path / "cache", "--i3d",
                              tmp_path / "i3d.pt", "--output", tmp_path / "r.json"], tmp_path)
    res = json.loads((tmp_path / "r.json").read_text())["results"]
    assert {"real (held out)", "generated", "real, frames shuffled", "noise"} == set(res)
    assert "8 a side, not 256" in out.stdout  # 12 train + 4 val videos: 8 reference, 8 for the floor
    gen, noise, real = res["generated"], res["noise"], res["real (held out)"]
    assert gen["FMD_n"] == gen["videos"] == real["videos"] == noise["FMD_n"] == 8  # every row at one sample size
    assert real["FMD"] == pytest.approx(real["FMD_floor"]) and gen["FMD_floor"] == real["FMD_floor"]
    assert gen["FMD"] == pytest.approx(real["FMD"])  # the same 8 held-out videos
    assert gen["FMD"] < noise["FMD"] and "FVD" in noise and "| set |" in out.stdout and "(floor " in out.stdout
    assert METRICS | {"prompt_accuracy"} <= set(real) and METRICS <= set(noise)
    assert (tmp_path / "cache/features_v2_tiny.pt").exists()


PRIOR = {"sets": [[1], [2, 5], [3, 7]], "counts": [1, 1, 2]}  # what a class-conditional checkpoint keeps


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory, classifier, feature_net):
    """A cache_dir holding the digit classifier and the feature network, as evaluate.py leaves them (training
    them again in every in-process run would cost seconds each)."""
    cache = tmp_path_factory.mktemp("eval_cache")
    torch.save(classifier.state_dict(), cache / "digit_cnn_v2.pt")
    torch.save(feature_net.state_dict(), cache / "features_v2_tiny.pt")
    return cache


def fake_generator(conditional=False, diffusion=False, prior=PRIOR):
    """What evaluate.py reads of a loaded checkpoint: its classes, its label prior, diffusion or next-token."""
    from lightning.pytorch.utilities.parsing import AttributeDict
    hp = AttributeDict(model_config={"num_classes": 10 if conditional else 0}, label_prior=prior if conditional else None)
    from models.gpt import TokenSampling
    settings = ({"sample_latents": None, "sampling": lambda o: dict(sampler="euler", steps=2, cfg_scale=1.0)}
                if diffusion else {"token_sampling": lambda o: TokenSampling()})
    return types.SimpleNamespace(hparams=hp, **settings)


@pytest.fixture
def fake_models(tiny_data, monkeypatch):
    """evaluate.py in-process with fake generators: unprompted samples are noise, prompted row i is held-out real
    video i; continuations are the real videos themselves; the VAE is the identity. Records the prompts and guidance."""
    import evaluate
    from minisora import evaluation
    calls = types.SimpleNamespace(prompts=[], continued=[])
    fd = evaluation.fd_with_ci  # FMD's 90% interval from 3 bootstrap draws, not 50: these runs check rows, not intervals
    monkeypatch.setattr(evaluation, "fd_with_ci", lambda a, b, n_boot=50, seed=0: fd(a, b, 3, seed))

    def generate_videos(module, n, batch_size=8, seed=0, opts=None, y=None):
        if y is None:
            return [torch.rand(3, 16, 64, 64) * 2 - 1 for _ in range(n)]
        calls.prompts.append((y.cpu().clone(), opts.cfg_scale))
        return list(to_float(held_out(tiny_data, len(y))[0]))

    def continue_videos(module, real, given, batch_size=8, seed=0, opts=None, y=None):
        calls.continued.append((given, None if y is None else y.cpu().clone(), opts.cfg_scale))
        return real.clone()
    monkeypatch.setattr(evaluate, "generate_videos", generate_videos)
    monkeypatch.setattr(evaluate, "continue_videos", continue_videos)
    identity = types.SimpleNamespace(encode=lambda x: x, decode=lambda z: z, quantize=False)
    monkeypatch.setattr("minisora.resolve.load_vae", lambda ref, device="cpu": identity)
    return calls


def held_out(tiny_data, n: int):
    """evaluate.py's n held-out real videos of the tiny set (val first, then train after the n reference ones) and
    their digits."""
    (val, val_labels), (train, train_labels) = tiny_split(tiny_data, "val"), tiny_split(tiny_data, "train")
    k = min(n, len(val))
    return np.concatenate([val[:k], train[n:2 * n - k]]), val_labels[:k] + train_labels[n:2 * n - k]


def evaluate_main(tiny_data, tmp_path, cache, args, module=None, monkeypatch=None) -> dict:
    """evaluate.main on the tiny set (module: what --checkpoint loads); the written JSON."""
    import evaluate
    if module is not None:
        monkeypatch.setattr(evaluate, "load_generator", lambda ref, device: module)
    evaluate.main(["--dataset", "tiny", "--data_dir", str(tiny_data), "--cache_dir", str(cache),
                   "--output", str(tmp_path / "r.json"), *map(str, args)])
    return json.loads((tmp_path / "r.json").read_text())


def test_evaluate_prompted_and_vae(tiny_data, tmp_path, monkeypatch, classifier, eval_cache, fake_models):
    """In-process, with a fake class-conditional generator that returns the real val video of each prompt,
    and an identity VAE: prompted samples score as real ones, perfect reconstructions have no colour error."""
    real_videos, labels = held_out(tiny_data, 8)  # 12 train + 4 val videos: 8 a side
    module = fake_generator(conditional=True)
    res = evaluate_main(tiny_data, tmp_path, eval_cache, ["--checkpoint", tmp_path / "run/ck/last.ckpt", "--num_videos", 3,
                                                          "--prompted", "--prior_labels", "--cfg_scale", 2, "--vae", "fake"],
                        module, monkeypatch)["results"]
    (y, cfg), (drawn, prior_cfg) = fake_models.prompts
    assert cfg == 2.0 and y.shape == (8, 10) and all(set(np.flatnonzero(row.numpy())) == set(l) for row, l in zip(y, labels))
    drawn = [np.flatnonzero(row.numpy()).tolist() for row in drawn]  # one per held-out video, each a set of the prior
    assert prior_cfg == 2.0 and len(drawn) == 8 and all(d in PRIOR["sets"] for d in drawn) and len(set(map(tuple, drawn))) > 1
    scored = res["generated (labels drawn from the training data)"]  # the fake drew real videos: scored against the draws
    assert scored["prompt_accuracy"] == prompt_scores(real_videos, drawn, classifier)["prompt_accuracy"]
    real, prompted, rec = res["real (held out)"], res["generated (prompted)"], res["vae reconstruction"]
    assert res["generated"]["videos"] == 3 and res["generated"]["legibility"] < 0.5 * real["legibility"]
    for k in METRICS | {"prompt_accuracy", "FMD", "FMD_floor"}:
        assert prompted[k] == pytest.approx(real[k], nan_ok=True), k
    assert rec["colour_error"] == 0 and rec["PSNR"] > 60 and rec["legibility"] == pytest.approx(real["legibility"])
    assert real["videos"] == prompted["videos"] == rec["videos"] == 8 and real["FMD_n"] == rec["FMD_n"] == 8  # one n


CONTROLS = {"real (held out)", "real, frames shuffled", "noise"}


@pytest.mark.parametrize("args, module, sets, continued", [
    ([], None, set(), False),  # real data only: the floor
    (["--videos", "GEN", "--vae", "fake"], None, {"generated", "vae reconstruction"}, False),
    (["--checkpoint", "CK"], dict(diffusion=True), {"generated"}, False),
    (["--checkpoint", "CK", "--num_videos", 0, "--continuation", 4, "--vae", "fake"], {}, {"vae reconstruction"}, True),
    (["--checkpoint", "CK", "--num_videos", 2, "--continuation", 4, "--continuation_cfg", 2, "--prompted",
      "--prior_labels"], dict(conditional=True),  # demo.py's GPT evaluation
     {"generated", "generated (prompted)", "generated (labels drawn from the training data)"}, True),
], ids=["real", "videos+vae", "checkpoint", "continuation+vae", "continuation_cfg+prompted+prior_labels"])
def test_evaluate_flag_combinations_that_work(args, module, sets, continued, tiny_data, tmp_path, monkeypatch,
                                              eval_cache, fake_models):
    """Each working combination of --videos / --checkpoint / --vae / --continuation / --prompted / --prior_labels
    writes its rows (and its continuation table); --continuation_cfg prompts the continuations with guidance S."""
    videos = tmp_path / "gen"
    videos.mkdir()
    for i, f in enumerate(sorted((tiny_data / "tiny/val").glob("*.mp4"))[:2]):
        (videos / f"{i:03d}.mp4").write_bytes(f.read_bytes())
    args = [{"GEN": videos, "CK": tmp_path / "run/ck/last.ckpt"}.get(x, x) for x in args]
    out = evaluate_main(tiny_data, tmp_path, eval_cache, ["--num_fmd", 4, "--num_real", 2, *args],
                        None if module is None else fake_generator(**module), monkeypatch)
    assert set(out["results"]) == CONTROLS | sets
    assert set(out["continuation"]) == ({"model", "copy last given frame", "real"} if continued else set())
    if continued:
        assert out["continuation"]["model"]["PSNR"] > 60  # the fake continues with the real frames
        given, y, cfg = fake_models.continued[0]
        assert given == 4 and (y is None) == ("--continuation_cfg" not in args)
        assert y is None or (y.shape == (2, 10) and cfg == 2.0)
    assert all(cfg is None for _, cfg in fake_models.prompts)  # no --cfg_scale: the checkpoint's recipe decides


@pytest.mark.parametrize("args, message", [
    (["--videos", "v", "--checkpoint", "c"], "--videos and --checkpoint are two sources of generated videos"),
    (["--videos", "v", "--checkpoint", "c", "--continuation", 4], "--videos and --checkpoint are two sources"),
    (["--videos", "v", "--checkpoint", "c", "--prompted"], "--videos and --checkpoint are two sources"),
    (["--prompted"], "--prompted / --prior_labels / --continuation sample from a --checkpoint"),
    (["--prior_labels"], "sample from a --checkpoint"),
    (["--continuation", 4], "sample from a --checkpoint"),
    (["--videos", "v", "--prompted"], "sample from a --checkpoint"),
    (["--videos", "v", "--continuation", 4], "sample from a --checkpoint"),
    (["--vae", "x", "--prior_labels"], "sample from a --checkpoint"),
    (["--checkpoint", "c", "--continuation_cfg", 2], "--continuation_cfg prompts the --continuation K videos"),
    (["--videos", "v", "--num_videos", 0], "--num_videos 0 reads none of --videos"),
])
def test_evaluate_refuses_flag_combinations(args, message):
    """Combinations no checkpoint could serve: one line, before any data is read."""
    import evaluate
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--dataset", "no_such_dataset", *map(str, args)])
    assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("args, module, message", [
    (["--prompted"], {}, "--prompted needs a class-conditional checkpoint"),
    (["--prior_labels"], {}, "--prior_labels draws digit prompts for a class-conditional model"),
    (["--prior_labels"], dict(conditional=True, prior=None), "this checkpoint keeps no label prior"),
    (["--continuation", 4], dict(diffusion=True), "--continuation needs a next-token checkpoint"),
    (["--continuation", 4, "--continuation_cfg", 2], {}, "--continuation_cfg needs a class-conditional checkpoint"),
    (["--prompted"], dict(conditional=True, labels=False), "--prompted needs the real videos' labels"),
    (["--continuation", 3], dict(stride=4), "--continuation 3: must be a positive multiple of the VAE's temporal stride"),
    (["--num_videos", 1], None, "is neither an existing path"),  # no such checkpoint
    (["--num_videos", 0, "--vae", "no_such_vae.ckpt"], {}, "is neither an existing path"),
])
def test_evaluate_refuses_what_the_checkpoint_cannot_do(args, module, message, tiny_data, tmp_path, monkeypatch,
                                                        eval_cache):
    """Flags the loaded checkpoint cannot serve (or a checkpoint / VAE that is not there): one line, before the
    feature network or any sampling."""
    import evaluate
    if module is not None:
        module = dict(module)
        if not module.pop("labels", True):  # a val split without metadata.jsonl
            def no_labels(*args):
                raise FileNotFoundError("no metadata.jsonl")
            monkeypatch.setattr(evaluate, "load_labels", no_labels)
        stride = module.pop("stride", None)
        module = fake_generator(**module)
        if stride:
            module.vae = types.SimpleNamespace(temporal_stride=stride)
        monkeypatch.setattr(evaluate, "load_generator", lambda ref, device: module)
    monkeypatch.setattr(evaluate, "feature_net", lambda a: pytest.fail("refused after the feature network"))
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--dataset", "tiny", "--data_dir", str(tiny_data), "--cache_dir", str(eval_cache),
                       "--checkpoint", str(tmp_path / "no_such.ckpt"), *map(str, args)])
    assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)


def test_continuation_scores_only_the_generated_frames(real, classifier, real_metrics):
    """The given frames are excluded from the scores; the real continuation is perfect; holding the last given
    frame still (the baseline) scores a digit speed of ~0 against real's, and keeps the given digits' classes."""
    from minisora.data import hold_last_frame
    from minisora.evaluation import continuation_metrics
    perfect = continuation_metrics(real, real, 4, classifier)
    assert perfect["SSIM"] > 0.999 and perfect["PSNR"] > 60 and len(perfect["psnr_per_frame"]) == 12
    scrambled = real.copy()
    scrambled[:, :4] = 255 - scrambled[:, :4]  # other given frames: the scores must not move
    assert continuation_metrics(real, scrambled, 4, classifier)["PSNR"] == perfect["PSNR"]
    still = continuation_metrics(real, hold_last_frame(real, 4, 1), 4, classifier)
    assert still["mean_speed_px"] < 0.2 * real_metrics["mean_speed_px"] and still["PSNR"] < perfect["PSNR"]
    assert still["class_kept"] >= 0.5 and np.all(hold_last_frame(real, 4, 1)[:, 4:] == real[:, 3:4])


def test_continue_videos_encodes_only_the_given_frames(tiny_vaes, real):
    """continue_videos: the token model sees the codes of the given frames only; the output keeps those frames
    exactly and has the clip's length; diffusion models and bad K are refused."""
    import types

    from lightning.pytorch.utilities.parsing import AttributeDict

    from minisora.data import to_model_range
    from minisora.generate import Sampling, continue_videos
    from minisora.resolve import load_vae
    vae = load_vae(str(tiny_vaes["vq"]))
    seen, prompts = [], []

    def sample_codes(n, prompt_codes, seed=0, **kw):
        seen.append(prompt_codes)
        prompts.append(kw)
        rest = torch.randint(0, vae.n_codes, (n, 4 - prompt_codes.shape[1], *prompt_codes.shape[2:]))
        return torch.cat([prompt_codes, rest], 1)
    module = types.SimpleNamespace(vae=vae, sample_codes=sample_codes, token_sampling=lambda opts: opts,
                                   hparams=AttributeDict(model_config={"num_classes": 10}))
    x = to_model_range(torch.from_numpy(real[:3]).permute(0, 4, 1, 2, 3))
    out = continue_videos(module, x, 4)
    assert out.shape == x.shape and torch.equal(out[:, :, :4], x[:, :, :4]) and seen[0].shape == (3, 1, 16, 16)
    # the prompt is the code of the given frames held still for the clip's length (the clip shape the
    # non-causal encoder was trained on), whatever the future frames are
    still = torch.cat([x[:, :, :4], x[:, :, 3:4].expand(-1, -1, x.shape[2] - 4, -1, -1)], 2)
    assert torch.equal(seen[0], vae.encode_codes(still)[:, :1])
    future = x.clone()
    future[:, :, 4:] = -future[:, :, 4:]
    continue_videos(module, future, 4)
    assert torch.equal(seen[1], seen[0])
    assert prompts[0].get("y") is None  # no prompt: the null label
    # label prompts (e.g. the digits read in the given frames) reach the model batch by batch, with the guidance
    y = torch.eye(10)[[3, 7, 1]]
    continue_videos(module, x, 4, batch_size=2, y=y, opts=Sampling(cfg_scale=3.0))
    assert [p["opts"].cfg_scale for p in prompts[2:]] == [3.0, 3.0]
    assert torch.equal(prompts[2]["y"], y[:2]) and torch.equal(prompts[3]["y"], y[2:])
    with pytest.raises(ValueError, match="multiple of the VAE's temporal stride"):
        continue_videos(module, x, 6)
    with pytest.raises(ValueError, match="next-token model"):
        continue_videos(types.SimpleNamespace(vae=vae, sample_latents=None), x, 4)
