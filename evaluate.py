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

Every row has --num_fmd videos (default 256), so FMD and the rates compare at one sample size: FMD's reference is
the first N train videos; the 'real (held out)' row is N other real videos (the val split, then train videos after
the reference), which is also FMD's floor, what --vae reconstructs and whose digits --prompted prompts with.

The feature network and the digit classifier are trained on first use (a few CPU-minutes) and cached in
runs/evaluate/. I3D weights cannot be downloaded here: get StyleGAN-V's i3d_torchscript.pt
(https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt) and pass its path.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from minisora.cli import Parser, add_bad_video_arg, add_sampling_args, sampling_options
from minisora.data import VideoDataset, hold_last_frame, load_labels, to_model_range
from minisora.evaluation import (FMD, DigitCNN, FeatureNet, colour_error, continuation_metrics, given_classes,
                                 fd_with_ci, i3d_features, prompt_scores, to_float, train_digit_classifier,
                                 train_feature_net, video_metrics)
from minisora.generate import (Sampling, continue_videos, describe_sampling, generate_videos, is_diffusion,
                               label_prompts, load_generator, num_classes, prior_label_sets)
from minisora.video_io import list_videos, read_video, save_video_grid, to_uint8_frames

COLUMNS = ["videos", "FMD", "legibility", "legible_per_frame", "digits_per_frame", "mean_speed_px", "motion_residual_px",
           "identity_switch_rate", "chroma", "ink_kept", "hue_consistency", "hue_spread", "prompt_accuracy", "prompt_missed",
           "prompt_unprompted", "colour_error", "FVD",
           "PSNR", "SSIM"]


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def parse_args(argv=None):
    p = Parser(__doc__)
    p.add_argument("--dataset", default="flying_mnist", help="real videos: data/<dataset>/{train,val}")
    p.add_argument("--data_dir", default="data")
    add_bad_video_arg(p, default="skip")
    p.add_argument("--videos", default=None, help="folder of generated mp4s (or give --checkpoint, not both)")
    p.add_argument("--checkpoint", default=None, help="generator checkpoint to sample from (or give --videos, not both)")
    p.add_argument("--num_videos", type=int, default=None, help="generated videos to sample / read (default --num_fmd)")
    p.add_argument("--num_real", type=int, default=64, help="real val videos continued (--continuation)")
    p.add_argument("--num_fmd", type=int, default=256,
                   help="the sample size of every row: N real train videos are FMD's reference, N other real videos "
                        "(val first, then train) the 'real (held out)' row, FMD's floor, the videos --vae "
                        "reconstructs and the digit sets --prompted samples; N generated")
    p.add_argument("--prompted", action="store_true",
                   help="class-conditional checkpoint: also sample one video per held-out real video, prompted with "
                        "its digits, and report prompt accuracy")
    p.add_argument("--prior_labels", action="store_true",
                   help="class-conditional checkpoint: also sample one video per held-out real video (as --prompted), "
                        "its digit set drawn from the training data's (kept in the checkpoint), guided by it (--cfg_scale): "
                        "samples nobody prompted, scored with prompt accuracy against the drawn sets")
    p.add_argument("--continuation", type=int, default=0, metavar="K",
                   help="next-token checkpoint: also continue each real val video from its first K frames (a multiple "
                        "of the VAE's temporal stride; only those are encoded) and score the generated frames "
                        "against the real ones, beside a copy-the-last-given-frame baseline")
    p.add_argument("--continuation_cfg", type=float, default=None, metavar="S",
                   help="class-conditional checkpoint: prompt each --continuation with the digits the classifier reads "
                        "in its given frames (what class_kept compares against; nothing of the future), guidance S "
                        "(default, or 0: no prompt, the null label)")
    p.add_argument("--seed", type=int, default=0)
    add_sampling_args(p)  # --cfg_scale guides the --prompted / --prior_labels samples
    p.add_argument("--resolution", type=int, default=None, help="default: the real videos' size")
    p.add_argument("--sequence_length", type=int, default=16)
    p.add_argument("--vae", default=None, help="also score this VAE's reconstructions of the held-out real videos")
    p.add_argument("--i3d", default=None, help="StyleGAN-V I3D TorchScript file: adds FVD")
    p.add_argument("--feature_steps", type=int, default=300, help="training steps of the feature network (first use)")
    p.add_argument("--cache_dir", default="runs/evaluate")
    p.add_argument("--output", default=None, help="JSON results (default <cache_dir>/results_<name>.json)")
    p.add_argument("--track", action="store_true", help="log the results to wandb")
    return check_flags(p.parse_args(argv))


def check_flags(a):
    """Refuse the flag combinations no checkpoint could serve (those a checkpoint cannot: load_checked_generator)."""
    if a.videos and a.checkpoint:
        sys.exit("error: --videos and --checkpoint are two sources of generated videos: evaluate one per run")
    if (a.prompted or a.prior_labels or a.continuation) and not a.checkpoint:
        sys.exit("error: --prompted / --prior_labels / --continuation sample from a --checkpoint")
    if a.continuation_cfg and not a.continuation:
        sys.exit("error: --continuation_cfg prompts the --continuation K videos: give --continuation")
    if a.videos and a.num_videos == 0:
        sys.exit("error: --num_videos 0 reads none of --videos")
    return a


@dataclass
class Real:
    """The real videos, n a side: `reference` (FMD's, train) and `held_out` (val first, then train after the
    reference: the 'real (held out)' row, FMD's floor, what --vae reconstructs and --prompted prompts with, with their
    digits `labels`, None without metadata); `val`: the videos --continuation continues."""
    n: int  # the sample size of every row
    resolution: int
    reference: np.ndarray
    held_out: np.ndarray
    labels: list | None
    val: np.ndarray
    labels_file: Path


def dataset(a, split: str, **kw) -> VideoDataset:
    try:
        return VideoDataset(dataset=a.dataset, data_dir=a.data_dir, split=split, resolution=a.resolution,
                            sequence_length=a.sequence_length, as_uint8=True, on_error=a.on_bad_video, **kw)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


def real_sets(a) -> Real:
    val, train = dataset(a, "val"), dataset(a, "train")

    def real(ds, start, stop):
        return [ds[i]["video"].permute(1, 2, 3, 0).numpy() for i in range(start, min(len(ds), stop))]
    n = min(a.num_fmd, len(train), (len(train) + len(val)) // 2)
    if n < a.num_fmd:
        print(f"[evaluate] only {len(train)} train + {len(val)} val real videos: {n} a side, not {a.num_fmd}")
    n_val = min(n, len(val))  # held out: val videos first, then train videos after the reference
    held_out = np.stack(real(val, 0, n_val) + real(train, n, n + n - n_val))
    try:
        labels = (load_labels(val.dir, [f.relative_to(val.dir).as_posix() for f in val.files[:n_val]]) +
                  load_labels(train.dir, [f.relative_to(train.dir).as_posix() for f in train.files[n:2 * n - n_val]]))
    except (FileNotFoundError, ValueError):
        labels = None
    return Real(n, a.resolution or int(val[0]["video"].shape[-1]), np.stack(real(train, 0, n)), held_out, labels,
                np.stack(real(val, 0, min(a.num_real, len(val)))), val.dir / "metadata.jsonl")


def controls(held_out: np.ndarray) -> dict:
    rng = np.random.default_rng(0)
    return {"real, frames shuffled": np.stack([v[rng.permutation(len(v))] for v in held_out]),
            "noise": (rng.random(held_out.shape) * 255).astype(np.uint8)}


def cached(path: Path, build, cls):
    if path.exists():
        net = cls()
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    net = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net


def digit_classifier(a) -> DigitCNN:
    return cached(Path(a.cache_dir) / "digit_cnn_v2.pt", lambda: train_digit_classifier()[0], DigitCNN)


def feature_net(a) -> FeatureNet:
    return cached(Path(a.cache_dir) / f"features_v2_{Path(a.dataset).name}.pt",
                  lambda: train_feature_net(dataset(a, "train", random_clip=True), a.feature_steps), FeatureNet)


def load_folder(folder: Path, n: int | None, frames: int | None) -> np.ndarray:
    files = [f for f in list_videos(folder) if "grid" not in f.name][:n]
    if not files:
        sys.exit(f"error: no videos in {folder}")
    vids = [read_video(f) for f in files]
    t = min(len(v) for v in vids) if frames is None else frames
    return np.stack([v[:t] for v in vids])


def load_checked_generator(a, real: Real):
    """The --checkpoint generator, once it is known to serve every flag given (refused before any sampling)."""
    try:
        module = load_generator(a.checkpoint, DEVICE)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    conditional = num_classes(module) > 0
    if a.prompted and not conditional:
        sys.exit("error: --prompted needs a class-conditional checkpoint (model_config num_classes)")
    if a.prompted and real.labels is None:
        sys.exit(f"error: --prompted needs the real videos' labels ({real.labels_file})")
    if a.prior_labels:
        try:
            prior_label_sets(module, 1)  # unconditional, or no label prior kept: refused here
        except ValueError as e:
            sys.exit(f"error: {e}")
    if a.continuation and is_diffusion(module):
        sys.exit("error: --continuation needs a next-token checkpoint (GPT / Mamba); diffusion models generate whole clips")
    if a.continuation_cfg and not conditional:
        sys.exit("error: --continuation_cfg needs a class-conditional checkpoint (model_config num_classes)")
    return module


def sampling(a, continuation: bool = False) -> Sampling:
    """The one place the sampling flags become the generator's options (None: the checkpoint's recipe value);
    continuations are guided by --continuation_cfg instead of --cfg_scale."""
    opts = sampling_options(a)
    return replace(opts, cfg_scale=a.continuation_cfg) if continuation else opts


def sample(module, n: int, a, y: torch.Tensor | None = None) -> np.ndarray:
    """n uint8 videos (n, T, H, W, 3) from a generator (minisora.generate); y: (n, classes) multi-hot prompts."""
    try:
        videos = generate_videos(module, n, seed=a.seed, opts=sampling(a), y=y)
    except ValueError as e:  # sampling settings the checkpoint cannot take
        sys.exit(f"error: {e}")
    return np.stack([to_uint8_frames(v) for v in videos])


def generated_sets(a, module, real: Real, clf: DigitCNN) -> tuple[dict, dict]:
    """The sets sampled from --checkpoint (unconditional, --prompted, --prior_labels) and their prompt scores."""
    sets, extra = {}, {}
    num_videos = a.num_fmd if a.num_videos is None else a.num_videos
    try:
        how = describe_sampling(module, sampling(a))
    except ValueError as e:  # sampling settings the checkpoint cannot take
        sys.exit(f"error: {e}")
    if num_videos:
        print(f"[evaluate] sampling {num_videos} videos from {a.checkpoint} ({how})")
        sets["generated"] = sample(module, num_videos, a)
    prompts = {}  # set: (one digit set per video, what they are)
    if a.prompted:
        prompts["generated (prompted)"] = real.labels, "the held-out real videos' digits"
    if a.prior_labels:
        prompts["generated (labels drawn from the training data)"] = (prior_label_sets(module, real.n, a.seed),
                                                                      "digit sets drawn from the training data's")
    cfg = "the checkpoint's" if a.cfg_scale is None else a.cfg_scale
    for key, (labels, what) in prompts.items():
        print(f"[evaluate] sampling {len(labels)} videos prompted with {what} (cfg scale {cfg})")
        sets[key] = sample(module, len(labels), a, y=label_prompts(labels, num_classes(module), DEVICE))
        extra[key] = prompt_scores(sets[key], labels, clf)
    return sets, extra


def continuation_set(a, module, real_val: np.ndarray, clf: DigitCNN) -> np.ndarray:
    """Each real val video continued from its first --continuation frames, prompted (--continuation_cfg) with the
    digits read in those frames."""
    y = None
    if a.continuation_cfg:
        read = [sorted(given_classes(v, a.continuation, clf)) for v in real_val]
        y = label_prompts(read, num_classes(module), DEVICE)
        print(f"[evaluate] continuations prompted with the digits read in their given frames ({sum(map(bool, read))} "
              f"of {len(read)} videos; the rest get the null label), guidance {a.continuation_cfg}")
    try:
        cont = continue_videos(module, to_model_range(torch.from_numpy(real_val).permute(0, 4, 1, 2, 3)),
                               a.continuation, seed=a.seed, opts=sampling(a, continuation=True), y=y)
    except ValueError as e:
        sys.exit(f"error: {e}")
    return np.stack([to_uint8_frames(v) for v in cont])


def vae_reconstructions(a, real_val: np.ndarray) -> tuple[np.ndarray, dict]:
    """--vae's reconstructions of real videos, and their colour error, PSNR and SSIM."""
    from minisora.metrics import psnr, ssim
    from minisora.resolve import load_vae
    try:
        vae = load_vae(a.vae, DEVICE)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    x = to_model_range(torch.from_numpy(real_val).permute(0, 4, 1, 2, 3))

    def recon(v):  # tokenizers through their tokens (motion tokens included), others through their latents
        return vae.decode_codes(vae.encode_codes(v)) if vae.quantize else vae.decode(vae.encode(v))
    with torch.no_grad():
        rec = torch.cat([recon(x[i:i + 8].to(DEVICE)).float().cpu() for i in range(0, len(x), 8)])
    videos = np.stack([to_uint8_frames(v) for v in rec])
    return videos, {"colour_error": colour_error(real_val, videos), "PSNR": float(psnr(rec, x).mean()),
                    "SSIM": float(ssim(rec, x).mean())}


def video_sets(a, real: Real, module, clf: DigitCNN) -> tuple[dict, dict]:
    """Every set to score, in the table's order, and the extra columns of some (prompt scores, reconstruction errors)."""
    sets, extra = {"real (held out)": real.held_out}, {}
    if real.labels is not None:  # what the classifier reads in real videos: the ceiling of prompt accuracy
        extra["real (held out)"] = prompt_scores(real.held_out, real.labels, clf)
    if a.videos:
        sets["generated"] = load_folder(Path(a.videos), a.num_fmd if a.num_videos is None else a.num_videos,
                                        a.sequence_length)
    if module is not None:
        generated, prompt_extra = generated_sets(a, module, real, clf)
        sets.update(generated)
        extra.update(prompt_extra)
    if a.vae:
        sets["vae reconstruction"], extra["vae reconstruction"] = vae_reconstructions(a, real.held_out)
    sets.update(controls(real.held_out))
    return sets, extra


def score(a, sets: dict, extra: dict, fmd: FMD, clf: DigitCNN, real: Real) -> dict:
    """Every set's row: FMD against the reference, the video metrics, its extra columns, FVD with --i3d."""
    n = real.n
    i3d_ref = i3d_features(a.i3d, to_float(real.reference)) if a.i3d else None
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
    return results


def print_table(a, results: dict, fmd: FMD, real: Real) -> None:
    used = [c for c in COLUMNS if any(c in r for r in results.values())]
    print(f"\n[evaluate] {Path(a.dataset).name} at {real.resolution}², {a.sequence_length} frames. FMD vs {real.n} real "
          f"train videos [90% bootstrap interval] (floor: as many other real videos vs the same reference; "
          f"at {real.n}: {fmd.floor(real.n):.3g})\n")
    print("| set | " + " | ".join(used) + " |\n|---|" + "---|" * len(used))
    for label, r in results.items():
        cells = []
        for c in used:
            v = r.get(c)
            cells.append("–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
            if c == "FMD" and v is not None:
                cells[-1] += f" [{r['FMD_90ci'][0]:.3g}, {r['FMD_90ci'][1]:.3g}] (floor {r['FMD_floor']:.3g}, n={r['FMD_n']})"
        print(f"| {label} | " + " | ".join(cells) + " |")


def report_continuation(a, real_val: np.ndarray, cont: np.ndarray, clf: DigitCNN) -> dict:
    """The continuations' scores beside copying the last given frame and the real videos: printed, returned, and
    the first 8 saved as a grid."""
    k, cols = a.continuation, ["PSNR", "SSIM", "legible_per_frame", "mean_speed_px", "class_kept", "chroma", "ink_kept"]
    scores = {"model": continuation_metrics(real_val, cont, k, clf),
              "copy last given frame": continuation_metrics(real_val, hold_last_frame(real_val, k, 1), k, clf),
              "real": continuation_metrics(real_val, real_val, k, clf)}
    print(f"\n[evaluate] continuation: {len(real_val)} val videos, the first {k} frames given, frames "
          f"{k}..{real_val.shape[1] - 1} scored\n\n| continuation | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for label, r in scores.items():
        print(f"| {label} | " + " | ".join(f"{r[c]:.4g}" for c in cols) + " |")
    save_video_grid(list(to_float(cont[:8])), Path(a.cache_dir) / f"continuation_{run_name(a)}.mp4", fps=5)
    return scores


def run_name(a) -> str:
    return Path(a.videos).name if a.videos else Path(a.checkpoint).parent.parent.name if a.checkpoint else "real"


def write_results(a, results: dict, continuation: dict) -> Path:
    out = Path(a.output) if a.output else Path(a.cache_dir) / f"results_{run_name(a)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "results": results, "continuation": continuation}, indent=1))
    if a.track:
        import wandb
        wandb.init(project="flying_mnist", job_type="evaluate", config=vars(a))
        wandb.log({f"{k}/{m}": v for k, r in results.items() for m, v in r.items() if isinstance(v, float)})
        wandb.finish()
    return out


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    real = real_sets(a)
    module = load_checked_generator(a, real) if a.checkpoint else None
    clf = digit_classifier(a)
    cont = continuation_set(a, module, real.val, clf) if a.continuation else None  # before the long sampling
    sets, extra = video_sets(a, real, module, clf)
    fmd = FMD(feature_net(a), real.reference, real.held_out)
    results = score(a, sets, extra, fmd, clf, real)
    print_table(a, results, fmd, real)
    continuation = report_continuation(a, real.val, cont, clf) if cont is not None else {}
    out = write_results(a, results, continuation)
    print(f"\n[evaluate] {time.time() - t0:.0f}s; results: {out}")


if __name__ == "__main__":
    main()
