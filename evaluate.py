"""Score videos: FMD (Fréchet distance on Flying-MNIST features, with the real-vs-real floor and a
bootstrap interval), digit legibility, temporal consistency (identity switches, motion residual),
optional I3D FVD and VAE reconstruction PSNR/SSIM. Prints a table and writes a JSON file.

  python evaluate.py --dataset flying_mnist_demo                                   # real data only (the floor)
  python evaluate.py --dataset flying_mnist_demo --videos runs/demo/samples       # a folder of mp4s
  python evaluate.py --dataset flying_mnist_demo --checkpoint runs/iddpm/<run>/checkpoints/last.ckpt --num_videos 64
  python evaluate.py --dataset flying_mnist_demo --vae runs/train_vqvae/<run>/checkpoints/last.ckpt   # reconstruction
  python evaluate.py ... --i3d path/to/i3d_torchscript.pt                          # + FVD

The feature network and the digit classifier are trained on first use (a few CPU-minutes) and cached in
runs/evaluate/. I3D weights cannot be downloaded here: get StyleGAN-V's i3d_torchscript.pt
(https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt) and pass its path.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from minisora.data import VideoDataset, to_model_range
from minisora.evaluation import (DigitCNN, FeatureNet, extract_features, fd_with_ci, i3d_features, legibility_and_motion,
                                 standardizer, to_float, train_digit_classifier, train_feature_net)
from minisora.video_io import list_videos, read_video


def load_folder(folder: Path, n: int | None, frames: int | None) -> np.ndarray:
    files = [f for f in list_videos(folder) if "grid" not in f.name][:n]
    if not files:
        raise FileNotFoundError(f"no videos in {folder}")
    vids = [read_video(f) for f in files]
    t = min(len(v) for v in vids) if frames is None else frames
    return np.stack([v[:t] for v in vids])


def sample_checkpoint(ref: str, n: int, sampler: str, steps: int, seed: int) -> np.ndarray:
    """n uint8 videos (n, T, H, W, 3) from a diffusion or token-model checkpoint (see sample.py)."""
    from minisora.video_io import to_uint8_frames
    from sample import load_generator, generate_videos

    m = load_generator(ref, "cuda" if torch.cuda.is_available() else "cpu")
    return np.stack([to_uint8_frames(v) for v in generate_videos(m, n, 8, seed, sampler, steps)])


def cached(path: Path, build, cls):
    if path.exists():
        net = cls()
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    net = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="flying_mnist", help="real videos: data/<dataset>/{train,val}")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--videos", default=None, help="folder of generated mp4s")
    p.add_argument("--checkpoint", default=None, help="generator checkpoint to sample from")
    p.add_argument("--num_videos", type=int, default=64, help="generated videos to sample / read")
    p.add_argument("--num_real", type=int, default=64, help="real videos per reference set")
    p.add_argument("--sampler", default="dpm++")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=None, help="default: the real videos' size")
    p.add_argument("--sequence_length", type=int, default=16)
    p.add_argument("--vae", default=None, help="also report reconstruction PSNR/SSIM of this VAE on val videos")
    p.add_argument("--i3d", default=None, help="StyleGAN-V I3D TorchScript file: adds FVD")
    p.add_argument("--feature_steps", type=int, default=300, help="training steps of the feature network (first use)")
    p.add_argument("--cache_dir", default="runs/evaluate")
    p.add_argument("--output", default=None, help="JSON results (default <cache_dir>/results_<name>.json)")
    p.add_argument("--track", action="store_true", help="log the results to wandb")
    a = p.parse_args(argv)
    t0 = time.time()
    common = dict(dataset=a.dataset, data_dir=a.data_dir, sequence_length=a.sequence_length, as_uint8=True)
    try:
        val = VideoDataset(split="val", resolution=a.resolution, max_videos=a.num_real, **common)
        train = VideoDataset(split="train", resolution=a.resolution, **common)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    res = a.resolution or int(val[0]["video"].shape[-1])

    def real(ds, n, offset=0):
        return np.stack([ds[i]["video"].permute(1, 2, 3, 0).numpy() for i in range(offset, min(len(ds), offset + n))])
    real_a, real_b = real(val, a.num_real), real(train, a.num_real, offset=max(0, len(train) - a.num_real))
    cache = Path(a.cache_dir)
    feat_train = VideoDataset(split="train", resolution=a.resolution, random_clip=True, **common)
    fnet = cached(cache / f"features_v2_{Path(a.dataset).name}.pt", lambda: train_feature_net(feat_train, a.feature_steps), FeatureNet)
    clf = cached(cache / "digit_cnn.pt", lambda: train_digit_classifier()[0], DigitCNN)

    sets = {"real (val)": real_a}
    name = "real"
    if a.videos:
        sets["generated"] = load_folder(Path(a.videos), a.num_videos, a.sequence_length)
        name = Path(a.videos).name
    elif a.checkpoint:
        print(f"[evaluate] sampling {a.num_videos} videos from {a.checkpoint} ({a.sampler}, {a.steps} steps)")
        sets["generated"] = sample_checkpoint(a.checkpoint, a.num_videos, a.sampler, a.steps, a.seed)
        name = Path(a.checkpoint).parent.parent.name
    rng = np.random.default_rng(0)
    sets["real, frames shuffled"] = np.stack([v[rng.permutation(len(v))] for v in real_a])
    sets["noise"] = (rng.random(real_a.shape) * 255).astype(np.uint8)

    ref_raw = extract_features(fnet, to_float(real_b))
    z = standardizer(ref_raw)
    ref = z(ref_raw)
    results = {}
    for label, vids in sets.items():
        fmd, lo, hi = fd_with_ci(z(extract_features(fnet, to_float(vids))), ref)
        r = {"videos": len(vids), "FMD": fmd, "FMD_90ci": [lo, hi], **legibility_and_motion(vids, clf)}
        if a.i3d:
            r["FVD"] = fd_with_ci(i3d_features(a.i3d, to_float(vids)), i3d_features(a.i3d, to_float(real_b)))[0]
        results[label] = r
    if a.vae:
        from minisora.metrics import psnr, ssim
        from minisora.resolve import load_vae
        vae = load_vae(a.vae)
        x = torch.stack([to_model_range(val[i]["video"]) for i in range(len(val))])
        rec = torch.cat([vae.decode(vae.encode(x[i:i + 8])) for i in range(0, len(x), 8)])
        results["vae reconstruction"] = {"videos": len(x), "PSNR": float(psnr(rec, x).mean()), "SSIM": float(ssim(rec, x).mean())}
    cols = ["videos", "FMD", "legibility", "digits_per_frame", "identity_switch_rate", "motion_residual_px", "FVD", "PSNR", "SSIM"]
    used = [c for c in cols if any(c in r for r in results.values())]
    print(f"\n[evaluate] {Path(a.dataset).name} at {res}², {a.sequence_length} frames; FMD vs {len(real_b)} real train videos "
          f"(real-vs-real floor = the 'real (val)' row)\n")
    print("| set | " + " | ".join(used) + " |\n|---|" + "---|" * len(used))
    for label, r in results.items():
        cells = []
        for c in used:
            v = r.get(c)
            cells.append("–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
            if c == "FMD" and v is not None:
                cells[-1] += f" [{r['FMD_90ci'][0]:.3g}, {r['FMD_90ci'][1]:.3g}]"
        print(f"| {label} | " + " | ".join(cells) + " |")
    out = Path(a.output) if a.output else cache / f"results_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    print(f"\n[evaluate] {time.time() - t0:.0f}s; results: {out}")
    if a.track:
        import wandb
        wandb.init(project="flying_mnist", job_type="evaluate", config=vars(a))
        wandb.log({f"{k}/{m}": v for k, r in results.items() for m, v in r.items() if isinstance(v, float)})
        wandb.finish()


if __name__ == "__main__":
    main()
