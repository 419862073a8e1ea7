"""Train a GPT (next-token predictor) on the VQ codes of videos (tokens .npy from tokenize_videos.py);
sample whole videos with a KV cache and decode them with the VQ-VAE.

  python train_latent_nanogpt.py --block_size 512 --tokens_input_file data/latents/flying_mnist__model-kbu39ped_tokens_32frames_train.npy \\
      --sample_interval 2000 --batch_size 8 --gradient_accumulation_steps 4 --max_iters 10000000 --wandb_log

The vocabulary is the codebook (n_codes + BOS), positions are absolute (t, h, w) of the code grid,
so the sliding window (block_size) keeps every token's position. Samples also continue a real val video
from its first --prompt_frames latent frames.
"""
from __future__ import annotations

import argparse
import sys

from minisora.lit_gpt import add_lm_args, fit_lm, load_tokens


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--n_layer", type=int, default=8)
    m.add_argument("--n_head", type=int, default=6)
    m.add_argument("--n_embd", type=int, default=768)
    m.add_argument("--pos_emb", default="3d", choices=["3d", "1d"], help="absolute position embedding of the code grid")
    m.add_argument("--sparse_context_window", action="store_true",
                   help="upstream's experiment: the context keeps its last --context_stride_start tokens densely and "
                        "every --context_stride-th token before them, so block_size tokens reach further back "
                        "(sampling then recomputes the window every step: no KV cache)")
    m.add_argument("--context_stride", type=int, default=2, help="with --sparse_context_window")
    m.add_argument("--context_stride_start", type=int, default=32, help="with --sparse_context_window: dense tail length")
    m.add_argument("--mamba", action="store_true", help="use Mamba blocks instead of attention (as train_latent_mamba.py)")
    add_lm_args(p)
    a = p.parse_args(argv)
    if a.sparse_context_window and a.mamba:
        sys.exit("error: --sparse_context_window is for the transformer (a Mamba state already summarises all the past)")
    try:
        arr, meta, n_codes, vae = load_tokens(a)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    if a.mamba:
        cfg = dict(vocab_size=n_codes + 1, d_model=a.n_embd, n_layer=a.n_layer)
        fit_lm(a, "mamba", cfg, arr, n_codes, vae, "train_latent_nanogpt")
        return
    cfg = dict(vocab_size=n_codes + 1, grid=list(arr.shape[1:]), block_size=a.block_size, n_layer=a.n_layer,
               n_head=a.n_head, n_embd=a.n_embd, dropout=a.dropout, pos_emb=a.pos_emb)
    context = None
    if a.sparse_context_window:
        context = (a.context_stride, a.context_stride_start)
        cfg.update(context_stride=a.context_stride, context_dense=a.context_stride_start)
    try:
        from models.gpt import GPTConfig
        GPTConfig(**cfg)
    except ValueError as e:
        sys.exit(f"error: {e}")
    fit_lm(a, "gpt", cfg, arr, n_codes, vae, "train_latent_nanogpt", context=context)


if __name__ == "__main__":
    main()
