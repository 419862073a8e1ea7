"""Next-token models benchmark: GPT training step (B=8, block 512) time and MFU, fp32 vs bf16; sampling
tokens/s with and without the KV cache (block 512); Mamba sampling tokens/s (pure-PyTorch recurrence,
and the mamba-ssm kernels' path when installed on a GPU).

    python bench/bench_lm.py                 # the seed's 61M GPT: ~3 min on 2 CPU cores
    python bench/bench_lm.py --small         # a 4-layer 256-wide GPT
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from minisora.cli import Parser
from bench.common import matmul_peak, sync, timeit, train_flops  # noqa: E402
from minisora.training import adamw  # noqa: E402
from models.gpt import GPT, GPTConfig  # noqa: E402
from models.mamba import MambaConfig, MambaLM  # noqa: E402


def tokens_per_s(model, n_new: int, use_cache: bool, dev: str, prompt_len: int = 1) -> float:
    prompt = torch.full((1, prompt_len), 5120, dtype=torch.long, device=dev)
    model.generate(prompt, 4, use_cache=use_cache, top_k=100)
    sync()
    t = time.perf_counter()
    model.generate(prompt, n_new, use_cache=use_cache, top_k=100)
    sync()
    return n_new / (time.perf_counter() - t)


def main():
    p = Parser(__doc__)
    p.add_argument("--small", action="store_true")
    p.add_argument("--tokens", type=int, default=256, help="tokens generated per sampling measurement")
    a = p.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    size = dict(n_layer=4, n_head=4, n_embd=256) if a.small else dict(n_layer=8, n_head=6, n_embd=768)
    cfg = GPTConfig(vocab_size=5121, grid=(8, 64, 64), block_size=512, dropout=0.0, **size)
    torch.manual_seed(0)
    model = GPT(cfg).to(dev)
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(f"device {dev}, torch {torch.__version__}; GPT {model.num_params() / 1e6:.1f}M params; matmul peak fp32 "
          f"{peak32 / 1e9:.0f} / bf16 {peak16 / 1e9:.0f} GFLOP/s\n")
    x = torch.randint(0, 5120, (8, 512), device=dev)
    opt = adamw(model, 5e-4, 0.1, matrices_only=True)  # what train_latent_*.py use

    def step(bf16):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    flops = train_flops(lambda: step(False))
    t32, t16 = timeit(lambda: step(False), iters=3, warmup=3), timeit(lambda: step(True), iters=3)  # 1st: allocator warm-up
    print("| GPT train step B=8, T=512 | s/step | tokens/s | MFU |\n|---|---|---|---|")
    print(f"| fp32 | {t32:.2f} | {8 * 511 / t32:.0f} | {flops / t32 / peak32:.0%} |")
    print(f"| bf16 autocast | {t16:.2f} | {8 * 511 / t16:.0f} | {flops / t16 / peak16:.0%} |")
    print("| upstream (61M, fp32 / bf16) | 10.39 / 6.57 | | 82% fp32 |\n")

    model.eval()
    with torch.no_grad():
        cached = tokens_per_s(model, a.tokens, True, dev)
        full_window = tokens_per_s(model, 16, False, dev, prompt_len=511)  # recompute a full 512 window per token
        cached_full = tokens_per_s(model, a.tokens, True, dev, prompt_len=511)
    print("| GPT sampling (batch 1, block 512) | tokens/s |\n|---|---|")
    print(f"| KV cache, from BOS ({a.tokens} tokens) | {cached:.1f} |")
    print(f"| KV cache, window full (511-token prompt) | {cached_full:.1f} |")
    print(f"| no cache, window full (recompute 512 tokens per step) | {full_window:.1f} |")
    print(f"| cache speed-up on a full window | {cached_full / full_window:.0f}× |")
    print("| upstream (no cache, 512 window) | 3.6 |")
    print(f"| one 32-frame 256² video (32,768 tokens) at the cached rate | {32768 / cached_full / 60:.1f} min |\n")

    mcfg = MambaConfig(vocab_size=5121, d_model=size["n_embd"], n_layer=size["n_layer"])
    mamba = MambaLM(mcfg).to(dev).eval()
    with torch.no_grad():
        rate = tokens_per_s(mamba, a.tokens, True, dev)
    from models.mamba import _kernels
    print("| Mamba sampling (batch 1) | tokens/s |\n|---|---|")
    print(f"| recurrent step, {sum(p.numel() for p in mamba.parameters()) / 1e6:.1f}M params | {rate:.1f} |")
    print(f"| mamba-ssm kernels | {'installed (training scan)' if _kernels() and dev == 'cuda' else 'not available here'} |")


if __name__ == "__main__":
    main()
