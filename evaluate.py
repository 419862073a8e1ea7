"""Score videos as a viewer sees them: FMD (Fréchet distance on Flying-MNIST features, against N real train
videos, with its real-vs-real floor at the same size and a bootstrap interval), digit legibility, motion
(speed, constant-velocity-with-bounce residual, identity switches), colour (chroma, hue consistency along
tracks, hue spread across digits), prompt accuracy of class-conditional models, optional I3D FVD, and VAE
reconstructions scored by all of these plus PSNR/SSIM and colour error. Prints a table and writes a JSON file.

  python evaluate.py --dataset flying_mnist_demo                                   # real data only (the floor)
  python evaluate.py --dataset flying_mnist_demo --videos runs/demo/samples       # a folder of mp4s
  python evaluate.py --dataset flying_mnist_demo --checkpoint runs/iddpm/<run>/checkpoints/last.ckpt
  python evaluate.py ... --checkpoint <class-conditional run> --prompted --cfg_scale 2   # + prompt accuracy
  python evaluate.py ... --checkpoint <class-conditional run> --prior_labels --cfg_scale 3   # unprompted, RCG-style
  python evaluate.py --dataset flying_mnist_demo --vae runs/train_vqvae/<run>/checkpoints/last.ckpt   # reconstruction
  python evaluate.py ... --i3d path/to/i3d_torchscript.pt                          # + FVD

FMD uses --num_fmd videos a side (default 256): reference = the first N train videos; floor = N other real
videos (the val split, then train videos after the reference) vs the reference. A set of fewer videos (e.g.
the --prompted set, one per val video) is scored against the same reference with a floor of as many videos.

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

from minisora.cli import add_bad_video_arg, add_token_sampling_args, token_sampling
from minisora.data import VideoDataset, hold_last_frame, load_labels, to_model_range
from minisora.evaluation import (FMD, DigitCNN, FeatureNet, colour_error, continuation_metrics, given_classes,
                                 fd_with_ci, i3d_features, prompt_scores, to_float, train_digit_classifier,
                                 train_feature_net, video_metrics)
from minisora.generate import (continue_videos, generate_videos, label_prompts, load_generator, load_guide, num_classes,
                               prior_label_sets)
from minisora.video_io import list_videos, read_video, save_video_grid, to_uint8_frames

COLUMNS = ["videos", "FMD", "legibility", "legible_per_frame", "digits_per_frame", "mean_speed_px", "motion_residual_px",
           "identity_switch_rate", "chroma", "ink_kept", "hue_consistency", "hue_spread", "prompt_accuracy", "prompt_missed",
           "prompt_unprompted", "colour_error", "FVD",
           "PSNR", "SSIM"]


def load_folder(folder: Path, n: int | None, frames: int | None) -> np.ndarray:
    files = [f for f in list_videos(folder) if "grid" not in f.name][:n]
    if not files:
        raise FileNotFoundError(f"no videos in {folder}")
    vids = [read_video(f) for f in files]
    t = min(len(v) for v in vids) if frames is None else frames
    return np.stack([v[:t] for v in vids])


def sample(module, n: int, a, y: torch.Tensor | None = None, cfg_scale: float = 1.0, guide=None) -> np.ndarray:
    """n uint8 videos (n, T, H, W, 3) from a generator (minisora.generate); y: (n, classes) multi-hot prompts;
    guide: the --guide_checkpoint model (load_guide)."""
    try:
        videos = generate_videos(module, n, 8, a.seed, a.sampler, a.steps, y=y, cfg_scale=cfg_scale,
                                 **token_sampling(a, guide))
    except ValueError as e:  # sampling settings the checkpoint cannot take (e.g. --ink_temperature on an old one)
        sys.exit(f"error: {e}")
    return np.stack([to_uint8_frames(v) for v in videos])


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
    add_bad_video_arg(p, default="skip")
    p.add_argument("--videos", default=None, help="folder of generated mp4s")
    p.add_argument("--checkpoint", default=None, help="generator checkpoint to sample from")
    p.add_argument("--num_videos", type=int, default=None, help="generated videos to sample / read (default --num_fmd)")
    p.add_argument("--num_real", type=int, default=64, help="real val videos of the 'real (val)' row (and --vae, --prompted)")
    p.add_argument("--num_fmd", type=int, default=256,
                   help="FMD sample size: N real train videos as reference, N other real videos for the floor, N generated")
    p.add_argument("--prompted", action="store_true",
                   help="class-conditional checkpoint: also sample one video per val video, prompted with its digits, "
                        "and report prompt accuracy")
    p.add_argument("--prior_labels", action="store_true",
                   help="class-conditional checkpoint: also sample one video per val video (as --prompted), its digit "
                        "set drawn from the training data's (kept in the checkpoint), guided by it (--cfg_scale): "
                        "samples nobody prompted, scored with prompt accuracy against the drawn sets")
    p.add_argument("--continuation", type=int, default=0, metavar="K",
                   help="next-token checkpoint: also continue each real val video from its first K frames (a multiple "
                        "of the VAE's temporal stride; only those are encoded) and score the generated frames "
                        "against the real ones, beside a copy-the-last-given-frame baseline")
    p.add_argument("--continuation_cfg", type=float, default=0, metavar="S",
                   help="class-conditional checkpoint: prompt each --continuation with the digits the classifier reads "
                        "in its given frames (what class_kept compares against; nothing of the future), guidance S "
                        "(0: no prompt, the null label)")
    p.add_argument("--cfg_scale", type=float, default=2.0, help="classifier-free guidance scale of --prompted samples")
    p.add_argument("--sampler", default="dpm++")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    add_token_sampling_args(p)
    p.add_argument("--resolution", type=int, default=None, help="default: the real videos' size")
    p.add_argument("--sequence_length", type=int, default=16)
    p.add_argument("--vae", default=None, help="also score this VAE's reconstructions of the 'real (val)' videos")
    p.add_argument("--i3d", default=None, help="StyleGAN-V I3D TorchScript file: adds FVD")
    p.add_argument("--feature_steps", type=int, default=300, help="training steps of the feature network (first use)")
    p.add_argument("--cache_dir", default="runs/evaluate")
    p.add_argument("--output", default=None, help="JSON results (default <cache_dir>/results_<name>.json)")
    p.add_argument("--track", action="store_true", help="log the results to wandb")
    a = p.parse_args(argv)
    if (a.prompted or a.prior_labels or a.continuation) and not a.checkpoint:
        sys.exit("error: --prompted / --prior_labels / --continuation sample from a --checkpoint")
    if a.continuation_cfg and not a.continuation:
        sys.exit("error: --continuation_cfg prompts the --continuation K videos: give --continuation")
    t0 = time.time()
    common = dict(dataset=a.dataset, data_dir=a.data_dir, sequence_length=a.sequence_length, as_uint8=True,
                  on_error=a.on_bad_video)
    try:
        val = VideoDataset(split="val", resolution=a.resolution, **common)
        train = VideoDataset(split="train", resolution=a.resolution, **common)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    res = a.resolution or int(val[0]["video"].shape[-1])

    def real(ds, start, stop):
        return [ds[i]["video"].permute(1, 2, 3, 0).numpy() for i in range(start, min(len(ds), stop))]
    n = min(a.num_fmd, len(train), (len(train) + len(val)) // 2)
    if n < a.num_fmd:
        print(f"[evaluate] only {len(train)} train + {len(val)} val real videos: FMD with {n} a side, not {a.num_fmd}")
    reference = np.stack(real(train, 0, n))
    held_out = real(val, 0, n)  # the floor's real videos: val first, then train videos after the reference
    held_out = np.stack(held_out + real(train, n, n + n - len(held_out)))
    n_val = min(a.num_real, len(val))
    real_val = np.stack(real(val, 0, n_val))
    cache = Path(a.cache_dir)
    feat_train = VideoDataset(split="train", resolution=a.resolution, random_clip=True, **common)
    fnet = cached(cache / f"features_v2_{Path(a.dataset).name}.pt", lambda: train_feature_net(feat_train, a.feature_steps), FeatureNet)
    clf = cached(cache / "digit_cnn_v2.pt", lambda: train_digit_classifier()[0], DigitCNN)
    try:
        val_labels = load_labels(val.dir, [f.relative_to(val.dir).as_posix() for f in val.files[:n_val]])
    except (FileNotFoundError, ValueError):
        val_labels = None

    sets, extra = {"real (val)": real_val}, {}
    name = "real"
    num_videos = a.num_fmd if a.num_videos is None else a.num_videos
    if a.videos:
        sets["generated"] = load_folder(Path(a.videos), num_videos, a.sequence_length)
        name = Path(a.videos).name
    elif a.checkpoint:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            module = load_generator(a.checkpoint, device)
            guide = load_guide(a.guide_checkpoint, module, device)
        except (ValueError, FileNotFoundError, ConnectionError) as e:
            sys.exit(f"error: {e}")
        name = Path(a.checkpoint).parent.parent.name
        if num_videos:
            print(f"[evaluate] sampling {num_videos} videos from {a.checkpoint} ({a.sampler}, {a.steps} steps)")
            sets["generated"] = sample(module, num_videos, a, guide=guide)
        if a.prompted:
            if not num_classes(module):
                sys.exit("error: --prompted needs a class-conditional checkpoint (model_config num_classes)")
            if val_labels is None:
                sys.exit(f"error: --prompted needs the val labels ({val.dir / 'metadata.jsonl'})")
            y = label_prompts(val_labels, num_classes(module), device)
            print(f"[evaluate] sampling {n_val} videos prompted with the val videos' digits (cfg scale {a.cfg_scale})")
            sets["generated (prompted)"] = sample(module, n_val, a, y=y, cfg_scale=a.cfg_scale, guide=guide)
            extra["generated (prompted)"] = prompt_scores(sets["generated (prompted)"], val_labels, clf)
        if a.prior_labels:
            try:
                drawn = prior_label_sets(module, n_val, a.seed)
            except ValueError as e:
                sys.exit(f"error: {e}")
            print(f"[evaluate] sampling {len(drawn)} videos prompted with digit sets drawn from the training data's "
                  f"(cfg scale {a.cfg_scale})")
            key = "generated (labels drawn from the training data)"
            sets[key] = sample(module, len(drawn), a, y=label_prompts(drawn, num_classes(module), device),
                               cfg_scale=a.cfg_scale, guide=guide)
            extra[key] = prompt_scores(sets[key], drawn, clf)
    if val_labels is not None:  # what the classifier reads in real videos: the ceiling of prompt accuracy
        extra["real (val)"] = prompt_scores(real_val, val_labels, clf)
    if a.vae:
        from minisora.metrics import psnr, ssim
        from minisora.resolve import load_vae
        device = "cuda" if torch.cuda.is_available() else "cpu"
        vae = load_vae(a.vae, device)
        x = to_model_range(torch.from_numpy(real_val).permute(0, 4, 1, 2, 3))
        with torch.no_grad():
            def recon(v):  # tokenizers through their tokens (motion tokens included), others through their latents
                return vae.decode_codes(vae.encode_codes(v)) if vae.quantize else vae.decode(vae.encode(v))
            rec = torch.cat([recon(x[i:i + 8].to(device)).float().cpu() for i in range(0, len(x), 8)])
        sets["vae reconstruction"] = np.stack([to_uint8_frames(v) for v in rec])
        extra["vae reconstruction"] = {"colour_error": colour_error(real_val, sets["vae reconstruction"]),
                                       "PSNR": float(psnr(rec, x).mean()), "SSIM": float(ssim(rec, x).mean())}
    rng = np.random.default_rng(0)
    sets["real, frames shuffled"] = np.stack([v[rng.permutation(len(v))] for v in held_out])
    sets["noise"] = (rng.random(held_out.shape) * 255).astype(np.uint8)

    fmd = FMD(fnet, reference, held_out)
    i3d_ref = i3d_features(a.i3d, to_float(reference)) if a.i3d else None
    results = {}
    for label, vids in sets.items():
        if len(vids) < n:
            print(f"[evaluate] {label}: {len(vids)} videos, fewer than the FMD sample size {n}: FMD and its floor at {len(vids)}")
        if label in ("real, frames shuffled", "noise"):  # controls: FMD on all n, the other metrics on num_real
            r = {"videos": min(len(vids), a.num_real), **fmd(vids[:n]), **video_metrics(vids[:a.num_real], clf)}
        else:
            r = {"videos": len(vids), **fmd(vids[:n]), **video_metrics(vids, clf), **extra.get(label, {})}
        if a.i3d:
            r["FVD"] = fd_with_ci(i3d_features(a.i3d, to_float(vids[:n])), i3d_ref)[0]
        results[label] = r
    used = [c for c in COLUMNS if any(c in r for r in results.values())]
    print(f"\n[evaluate] {Path(a.dataset).name} at {res}², {a.sequence_length} frames. FMD vs {n} real train videos "
          f"[90% bootstrap interval] (floor: as many other real videos vs the same reference; "
          f"at {n}: {fmd.floor(n):.3g})\n")
    print("| set | " + " | ".join(used) + " |\n|---|" + "---|" * len(used))
    for label, r in results.items():
        cells = []
        for c in used:
            v = r.get(c)
            cells.append("–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
            if c == "FMD" and v is not None:
                cells[-1] += f" [{r['FMD_90ci'][0]:.3g}, {r['FMD_90ci'][1]:.3g}] (floor {r['FMD_floor']:.3g}, n={r['FMD_n']})"
        print(f"| {label} | " + " | ".join(cells) + " |")
    continuation = {}
    if a.continuation:
        prompts = {}
        if a.continuation_cfg:
            if not num_classes(module):
                sys.exit("error: --continuation_cfg needs a class-conditional checkpoint (model_config num_classes)")
            read = [sorted(given_classes(v, a.continuation, clf)) for v in real_val]
            prompts = dict(y=label_prompts(read, num_classes(module), device), cfg_scale=a.continuation_cfg)
            print(f"[evaluate] continuations prompted with the digits read in their given frames ({sum(map(bool, read))} "
                  f"of {len(read)} videos; the rest get the null label), guidance {a.continuation_cfg}")
        try:
            cont = continue_videos(module, to_model_range(torch.from_numpy(real_val).permute(0, 4, 1, 2, 3)),
                                   a.continuation, seed=a.seed, **token_sampling(a, guide), **prompts)
        except ValueError as e:
            sys.exit(f"error: {e}")
        cont = np.stack([to_uint8_frames(v) for v in cont])
        continuation = {"model": continuation_metrics(real_val, cont, a.continuation, clf),
                        "copy last given frame": continuation_metrics(real_val, hold_last_frame(real_val, a.continuation, 1),
                                                                      a.continuation, clf),
                        "real": continuation_metrics(real_val, real_val, a.continuation, clf)}
        cols = ["PSNR", "SSIM", "legible_per_frame", "mean_speed_px", "class_kept", "chroma", "ink_kept"]
        print(f"\n[evaluate] continuation: {len(real_val)} val videos, the first {a.continuation} frames given, frames "
              f"{a.continuation}..{real_val.shape[1] - 1} scored\n\n| continuation | " + " | ".join(cols) + " |\n|---|"
              + "---|" * len(cols))
        for label, r in continuation.items():
            print(f"| {label} | " + " | ".join(f"{r[c]:.4g}" for c in cols) + " |")
        save_video_grid(list(to_float(cont[:8])), cache / f"continuation_{name}.mp4", fps=5)
    out = Path(a.output) if a.output else cache / f"results_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "results": results, "continuation": continuation}, indent=1))
    print(f"\n[evaluate] {time.time() - t0:.0f}s; results: {out}")
    if a.track:
        import wandb
        wandb.init(project="flying_mnist", job_type="evaluate", config=vars(a))
        wandb.log({f"{k}/{m}": v for k, r in results.items() for m, v in r.items() if isinstance(v, float)})
        wandb.finish()


if __name__ == "__main__":
    main()
