"""Encoding-stage benchmark: clips/s through VAEHandle.encode (what latents.py / tokenize_videos.py run)
for a project VAE and the SD-VAE architecture (sd-vae-ft-mse's config, random weights: speed only).

    python bench/bench_encode.py            # CPU: reduced shapes; GPU: the seed's 32x256² clips
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from minisora.cli import Parser
from minisora.resolve import VAEHandle  # noqa: E402
from models.vqvae import VideoVAE, make_config  # noqa: E402


def sd_vae_arch() -> VAEHandle:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        scaling_factor=0.18215).eval()
    return VAEHandle(vae, "diffusers", "sd-vae-ft-mse (architecture)", "sd", 4, 1, 8, 0.18215)


def project(variant: str) -> VAEHandle:
    cfg = make_config(variant, n_codes=5120, embedding_dim=4)
    return VAEHandle(VideoVAE(cfg).eval(), "project", variant, variant, 4, cfg.temporal_stride, cfg.spatial_stride,
                     quantize=cfg.quantize, n_codes=cfg.n_codes)


def bench(vae: VAEHandle, shape, device, iters=3, tokens=False):
    vae.to(device)
    x = torch.rand(*shape, device=device) * 2 - 1
    f = vae.encode_codes if tokens else vae.encode
    f(x)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        f(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return shape[0] * iters / (time.perf_counter() - t)


def main():
    p = Parser(__doc__)
    p.add_argument("--iters", type=int, default=3)
    a = p.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {dev} ({torch.get_num_threads()} threads), torch {torch.__version__}\n")
    print("| VAE | what | clip (B×C×T×H×W) | clips/s | frames/s |\n|---|---|---|---|---|")
    rows = [(project("vae_s4t4_b"), "latents", (2, 3, 32, 256, 256), False),
            (project("s8_b"), "tokens", (2, 3, 32, 256, 256), True),
            (project("s4t4_m_vq"), "tokens", (8, 3, 16, 64, 64), True)]
    rows.append((sd_vae_arch(), "latents", (1, 3, 32, 256, 256) if dev == "cuda" else (1, 3, 4, 256, 256), False))
    rows.append((sd_vae_arch(), "latents", (1, 3, 16, 64, 64), False))
    for vae, what, shape, tok in rows:
        rate = bench(vae, shape, dev, a.iters, tok)
        print(f"| {vae.reference} | {what} | {'×'.join(map(str, shape))} | {rate:.2f} | {rate * shape[2]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
