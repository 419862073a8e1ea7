"""VAE training-step benchmark: forward + backward + Adam step time and peak memory per preset,
fp32 vs bf16 autocast. On a GPU: the seed's shape (batch 2, 32 frames, 256²). On CPU: a reduced shape
(batch 2, 16 frames, 64²) for every preset, plus the seed shape for the upstream-comparable presets.

    python bench/bench_vae.py                       # CPU: ~5 min on 2 cores
    python bench/bench_vae.py --presets s8_b --shapes 2x32x256
Each measurement runs in a fresh process so peak memory is its own (CPU: max RSS; GPU: max allocated).
"""
from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisora.cli import Parser  # noqa: E402

UPSTREAM_CPU = {  # upstream fp32 / bf16 s per step on this 2-core CPU (shared/reference/upstream_baseline.md)
    ("s4t4_b_vq", "2x16x64"): (0.111, 0.067), ("s4t4_b_vq", "2x32x256"): (6.111, 4.125),
    ("vae_s4t4_b", "2x16x64"): (0.086, 0.040), ("vae_s4t4_b", "2x32x256"): (2.320, 1.335),
    ("s8t8_b_vq", "2x16x64"): (0.066, 0.025), ("s8t8_b_vq", "2x32x256"): (1.016, 0.571),
}


def measure(preset: str, shape: str, bf16: bool, iters: int, q) -> None:
    import torch

    from models.vqvae import VideoVAE, make_config

    b, t, r = (int(v) for v in shape.split("x"))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = VideoVAE(make_config(preset, n_codes=5120, embedding_dim=4)).to(dev)
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)  # as train_vqvae (bf16 / fp32)
    x = (torch.rand(b, 3, t, r, r, device=dev) * 2 - 1)
    times = []
    for i in range(iters + 1):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            loss = model(x)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        if i:  # first iteration is warm-up
            times.append(time.perf_counter() - t0)
    mem = (torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    q.put((statistics.median(times), mem, sum(p.numel() for p in model.parameters())))


def main():
    p = Parser(__doc__)
    p.add_argument("--presets", nargs="+", default=["s4t4_b_vq", "s8_b", "vae_s4t4_b", "s8t8_b_vq", "s4t4_m_vq",
                                                     "vae_s4t4_m", "s4t4_l_vq"])
    p.add_argument("--shapes", nargs="+", default=None, help="BxTxR, e.g. 2x32x256 (default depends on device)")
    p.add_argument("--iters", type=int, default=3)
    a = p.parse_args()
    import torch
    gpu = torch.cuda.is_available()
    print(f"device: {torch.cuda.get_device_name() if gpu else 'cpu'} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print("| preset | params | input B×T×R² | fp32 s/step | bf16 s/step | peak mem fp32 / bf16 (MiB) | upstream fp32 / bf16 s |")
    print("|---|---|---|---|---|---|---|")
    ctx = mp.get_context("spawn")
    for preset in a.presets:
        shapes = a.shapes or (["2x32x256"] if gpu else ["2x16x64"] + (["2x32x256"] if preset in ("s4t4_b_vq", "vae_s4t4_b", "s8t8_b_vq", "s8_b") else []))
        for shape in shapes:
            res = []
            for bf16 in (False, True):
                q = ctx.Queue()
                proc = ctx.Process(target=measure, args=(preset, shape, bf16, a.iters, q))
                proc.start()
                res.append(q.get())
                proc.join()
            up = UPSTREAM_CPU.get((preset, shape)) if not gpu else None
            print(f"| {preset} | {res[0][2] / 1e6:.3f}M | {shape.replace('x', '×', 1).replace('x', '×')}² | {res[0][0]:.3f} | "
                  f"{res[1][0]:.3f} | {res[0][1]:.0f} / {res[1][1]:.0f} | {f'{up[0]} / {up[1]}' if up else '–'} |", flush=True)


if __name__ == "__main__":
    main()
