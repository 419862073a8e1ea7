"""Diffusion benchmark: training step time and MFU (FLOPs counted by torch / measured matmul peak) for
Latte-S/2 and the seed's ST-DiT shapes, fp32 vs bf16 autocast; and the time to sample one video with
upstream's 1000-step ancestral DDPM vs a 25-step DPM-Solver++.

    python bench/bench_diffusion.py          # ~4 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import matmul_peak, timeit, train_flops  # noqa: E402
from minisora.diffusion import GaussianDiffusion  # noqa: E402
from minisora.training import adamw  # noqa: E402
from models.latte import Latte, make_config  # noqa: E402
from models.stdit import STDiT, STDiTConfig  # noqa: E402

UPSTREAM = {"Latte-S/2 4×32², B=2": (1.933, 1.087, 0.370), "ST-DiT d6 h768, 4×8×32², B=1": (4.25, 2.39, None),
            "ST-DiT d16 h768 heads12, 4×8×32², B=1": (11.54, 6.37, None), "Latte-T/2 4×32², B=2": (0.387, 0.212, 0.054)}


def main(argv=None):
    argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)  # --help
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(f"device {dev}, torch {torch.__version__}; measured matmul peak: fp32 {peak32 / 1e9:.0f} GFLOP/s, "
          f"bf16 {peak16 / 1e9:.0f} GFLOP/s\n")
    configs = {
        "Latte-T/2 4×32², B=2": (lambda: Latte(make_config("Latte-T/2", input_size=32, num_frames=4, learn_sigma=True)), (2, 4, 4, 32, 32)),
        "Latte-S/2 4×32², B=2": (lambda: Latte(make_config("Latte-S/2", input_size=32, num_frames=4, learn_sigma=True)), (2, 4, 4, 32, 32)),
        "ST-DiT d6 h768, 4×8×32², B=1": (lambda: STDiT(STDiTConfig(input_size=(8, 32, 32), depth=6, hidden_size=768, num_heads=3)), (1, 4, 8, 32, 32)),
        "ST-DiT d16 h768 heads12, 4×8×32², B=1": (lambda: STDiT(STDiTConfig(input_size=(8, 32, 32), depth=16, hidden_size=768, num_heads=12)), (1, 4, 8, 32, 32)),
    }
    diff = GaussianDiffusion.create("linear", 1000, learn_sigma=True)
    print("| model | params | train step fp32 s | bf16 s | MFU fp32 | MFU bf16 | upstream fp32 / bf16 s | ratio bf16 vs upstream fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    sample_rows = []
    for name, (build, shape) in configs.items():
        torch.manual_seed(0)
        model = build().to(dev)
        opt = adamw(model, 1e-4)  # as the training scripts
        x0 = torch.randn(*shape, device=dev)

        def step(bf16):
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
                loss = diff.training_losses(model, x0)["loss"].mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        flops = train_flops(lambda: step(False))
        t32, t16 = timeit(lambda: step(False)), timeit(lambda: step(True))
        up = UPSTREAM.get(name)
        print(f"| {name} | {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M | {t32:.3f} | {t16:.3f} | "
              f"{flops / t32 / peak32:.0%} | {flops / t16 / peak16:.0%} | {up[0]} / {up[1]} | {t16 / up[0]:.2f}× |", flush=True)
        if name.startswith("Latte"):
            model.eval()
            one = (1, *shape[1:])
            fwd = timeit(lambda: model(torch.randn(one, device=dev), torch.tensor([500], device=dev)), iters=5)
            with torch.no_grad():
                solver = timeit(lambda: diff.sample(model, one, sampler="dpm++", steps=25, device=dev), iters=1)
            sample_rows.append((name, fwd, solver, up[2]))
    print("\n| model | one denoiser forward (B=1) s | 1000-step DDPM (est. = 1000 × forward) s | DPM-Solver++ 25 steps s (measured) | speed-up | upstream 1000-step s |")
    print("|---|---|---|---|---|---|")
    for name, fwd, solver, up in sample_rows:
        print(f"| {name} | {fwd:.3f} | {1000 * fwd:.0f} | {solver:.2f} | {1000 * fwd / solver:.0f}× | {up * 1000:.0f} |")


if __name__ == "__main__":
    main()
