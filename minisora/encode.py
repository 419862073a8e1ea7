"""The encoding stage shared by latents.py (continuous latents) and tokenize_videos.py (VQ codes):
every clip of a split -> one row of a stage file (minisora.stagefile), then optionally decode a few rows
back to mp4 and report PSNR against the source clips."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from models.layers import TEMPORAL_PADDINGS

from minisora.data import VideoDataset, collate_videos, to_model_range
from minisora.metrics import psnr
from minisora.cli import Parser, VAE_HELP, add_bad_video_arg, add_vae_arg
from minisora.resolve import VAEHandle, choose_vae, derive_vae, load_vae
from minisora.stagefile import StageWriter, check_vae_matches, load_stage, token_dtype
from minisora.video_io import VideoReadError, save_video_grid



def add_args(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--dataset", default="flying_mnist", help="reads data/<dataset>/<split> (or a folder path)")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--split", default="train")
    p.add_argument("--batch_size", type=int, default=2)
    add_vae_arg(p, help=VAE_HELP + ("" if kind == "latents" else "; must be a quantizing (VQ) VAE"))
    p.add_argument("--resolution", type=int, default=256, help="frame size the clips are resized to")
    p.add_argument("--sequence_length", type=int, default=32, help="frames per clip (one clip per video, from frame 0)")
    p.add_argument("--frame_stride", type=int, default=1)
    p.add_argument("--max_videos", type=int, default=None, help="only the first N videos of the split")
    add_bad_video_arg(p, default="raise")  # rows must stay aligned with the listed files
    p.add_argument("--output", default=None,
                   help=f"output .npy (default data/latents/<dataset>__<vae name>_{kind}_<T>frames_<split>.npy)")
    p.add_argument("--temporal_padding", default=None, choices=TEMPORAL_PADDINGS,
                   help="encode with this temporal padding instead of the VAE's own (project VAEs): 'replicate' pads "
                        "a clip's ends with copies of its first/last frame, so unchanged content keeps its code at the "
                        "clip's edges (zeros: the first and last latent frames differ from their neighbours). The "
                        "changed VAE is saved as <output>.vae.ckpt and named in the sidecar")
    if kind == "tokens":
        p.add_argument("--merge_codes", type=float, default=None, metavar="D",
                       help="VQ tokenizers: switch off every code closer than D (codebook distance) to a more used one "
                            "before tokenizing (near-duplicate codes merged: codes persist where content does not "
                            "change; see bench/bench_tokens.py --merge). Saved as <output>.vae.ckpt, like --temporal_padding")
        p.add_argument("--motion_tokens", type=int, default=None, metavar="R",
                       help="per-frame tokenizers: code only the first frame, then every cell of each later frame as a "
                            "motion vector (|dy|, |dx| <= R px) of the previous decoded frame's block: tokens n_codes + "
                            "0..(2R+1)^2-1 (models/motion.py; R=5 covers the demo data's <= 4.9 px/frame). Saved as "
                            "<output>.vae.ckpt, like --temporal_padding")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--decode", type=int, default=0, metavar="N",
                   help="decode the first N rows back to mp4 (next to the output) and print PSNR vs the source clips")


def main(argv, kind: str, description: str) -> Path:
    """The whole of latents.py (kind "latents") and tokenize_videos.py (kind "tokens")."""
    p = Parser(description)
    add_args(p, kind)
    return run(p.parse_args(argv), kind)


def default_output(a, vae: VAEHandle, kind: str) -> Path:
    return Path(a.data_dir) / "latents" / f"{Path(a.dataset).name}__{vae.name}_{kind}_{a.sequence_length}frames_{a.split}.npy"


def run(a, kind: str) -> Path:
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        a.vae = choose_vae(a.vae, kind, quantize=kind == "tokens")
        vae = load_vae(a.vae, device)
        if kind == "tokens" and not vae.quantize:
            raise ValueError(f"--vae {a.vae} does not quantize ({vae.kind} {vae.config.get('variant', '')}); tokens need "
                             f"a VQ variant (e.g. train_vqvae.py --network_variant s8_b)")
        latent_shape = vae.latent_shape(a.sequence_length, a.resolution, a.resolution)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    try:
        ds = VideoDataset(a.dataset, a.split, resolution=a.resolution, sequence_length=a.sequence_length,
                          frame_stride=a.frame_stride, data_dir=a.data_dir, max_videos=a.max_videos, as_uint8=True,
                          on_error=a.on_bad_video)
    except (ValueError, FileNotFoundError) as e:  # bad videos (each named, from the probe) or no data
        sys.exit(f"error: {e}")
    ds.on_error = "raise"  # past the probe, rows must stay aligned with ds.files: a file that fails to decode stops
    out = Path(a.output) if a.output else default_output(a, vae, kind)
    merge, motion = getattr(a, "merge_codes", None), getattr(a, "motion_tokens", None)
    if a.temporal_padding or merge or motion is not None:
        try:
            vae = derive_vae(vae, out.with_suffix(".vae.ckpt"), a.temporal_padding, merge, motion)
        except ValueError as e:
            sys.exit(f"error: {e}")
        print(f"[{kind}] encoding with {vae.reference}: temporal padding {vae.config.get('temporal_padding')}" + (
            f", codes closer than {merge} merged ({int(vae.module.quantizer.active.sum())} of "
            f"{vae.config['n_codes']} active)" if merge else "") + (
            f", motion tokens after the first frame (radius {motion}: {vae.n_codes} "
            f"tokens)" if motion else ""))
    if out.exists():
        print(f"[{kind}] {out} exists; delete it to recompute")
    else:
        shape = (len(ds), *(latent_shape if kind == "latents" else latent_shape[1:]))
        dtype = np.float32 if kind == "latents" else token_dtype(vae.n_codes)
        meta = {"kind": kind,
                "source": {"dataset": str(ds.dir.parent), "split": a.split, "num_videos": len(ds),
                           "files": [p.relative_to(ds.dir).as_posix() for p in ds.files],
                           "skipped": [{"file": Path(p).relative_to(ds.dir).as_posix(), "reason": r}
                                       for p, r in ds.skipped.items()],
                           "sequence_length": a.sequence_length, "resolution": a.resolution, "frame_stride": a.frame_stride,
                           "clip_start": 0},
                "vae": {"reference": vae.reference, "name": vae.name, "kind": vae.kind, "config": vae.config,
                        "latent_channels": vae.latent_channels, "temporal_stride": vae.temporal_stride,
                        "spatial_stride": vae.spatial_stride},
                "scaling_factor": vae.scaling_factor, "args": vars(a)}
        if kind == "tokens":
            meta["n_codes"], meta["quantizer"] = vae.n_codes, vae.config.get("quantizer", "vq")
            meta["motion_radius"] = vae.config.get("motion_radius", 0)
        writer = StageWriter(out, shape, dtype, meta)
        if writer.rows_done:
            print(f"[{kind}] resuming {out}: {writer.rows_done}/{len(ds)} rows already written")
        loader = DataLoader(Subset(ds, range(writer.rows_done, len(ds))), batch_size=a.batch_size,
                            num_workers=a.num_workers, pin_memory=device.startswith("cuda"), collate_fn=collate_videos)
        try:
            for batch in tqdm(loader, desc=f"encoding {a.split} -> {out.name}", unit="batch"):
                x = to_model_range(batch["video"].to(device, non_blocking=True))
                rows = vae.encode(x) if kind == "latents" else vae.encode_codes(x)
                writer.write(rows.cpu().numpy().astype(dtype))
        except VideoReadError as e:  # passed the probe, fails to decode; from a worker, the message ends the traceback
            msg = str(e).strip().splitlines()[-1].partition("VideoReadError: ")[2] or str(e)
            sys.exit(f"error: {msg} (it passed the up-front probe but does not decode: fix or remove it and rerun)")
        writer.finish()
        print(f"[{kind}] wrote {out} {list(shape)} {np.dtype(dtype).name} + sidecar {out.with_suffix('.json').name}")
    if a.decode:
        decode_check(out, vae, ds, a.decode, kind)
    return out


def decode_check(path: Path, vae: VAEHandle, ds: VideoDataset, n: int, kind: str) -> float:
    """Decode the first n rows, save source | decoded mp4s, print the mean PSNR."""
    arr, meta = load_stage(path, expect_kind=kind)
    check_vae_matches(meta, vae, path)
    out_dir = path.with_name(path.stem + "_decoded")
    scores = []
    for i in range(min(n, len(arr))):
        row = torch.from_numpy(np.array(arr[i:i + 1])).to(vae.device)  # a copy: the memmap is read-only
        video = vae.decode(row.float()) if kind == "latents" else vae.decode_codes(row.long())
        src = to_model_range(ds[i]["video"]).unsqueeze(0).to(video.device)
        scores.append(float(psnr(video, src)))
        save_video_grid([src[0].cpu(), video[0].cpu()], out_dir / f"{i:05d}.mp4", fps=10, gif=False)
    mean = float(np.mean(scores))
    print(f"[{kind}] decoded {len(scores)} rows to {out_dir}/ (source | decoded): PSNR {mean:.2f} dB "
          f"(per row: {', '.join(f'{s:.1f}' for s in scores)})")
    return mean
