"""Upstream's experimental "MDGPT" variant, made sound: a GPT over the first --num_latent_frames latent
frames of each video, trained optionally with --only_predict_last (each window's loss on one random next
token: a growing prefix predicts one token, upstream's curriculum) and sampled with a sliding window of
--sparse_block_size tokens over a KV cache.

  python train_latent_mdgpt.py --block_size 512 --sparse_block_size 512 --sample_interval 1000 --num_latent_frames 8 \\
      --batch_size 8 --gradient_accumulation_steps 4 --use_1d_pos_emb --max_iters 100000000 --only_predict_last --wandb_log

Upstream added per-block cross-attention to previous-frame / previous-row token contexts through xformers;
that path crashed and is not reproduced. The absolute 3D position embedding of train_latent_nanogpt.py
(the default here; --use_1d_pos_emb switches to one table over the whole video) lets a window attend to
the previous frame inside its context, which is what the cross-attention was for.
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
    m.add_argument("--sparse_block_size", type=int, default=128, help="generation window (KV cache length)")
    m.add_argument("--num_latent_frames", type=int, default=32, help="keep the first N latent frames of each video")
    m.add_argument("--use_1d_pos_emb", action="store_true", help="one learned position table over the whole video")
    m.add_argument("--causal", action="store_true", help="accepted for upstream compatibility (attention is always causal)")
    m.add_argument("--only_predict_last", action="store_true", help="loss on one random next token per window")
    add_lm_args(p)
    p.set_defaults(tokens_input_file="data/latents/flying_mnist__model-kbu39ped_tokens_32frames_train.npy")
    a = p.parse_args(argv)
    try:
        arr, meta, n_codes, vae = load_tokens(a)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    arr = arr[:, :a.num_latent_frames]
    if a.block_size + 1 > arr[0].size + 1:
        a.block_size = int(arr[0].size)
        print(f"[train_latent_mdgpt] block_size capped at {a.block_size} (tokens per cropped video)")
    window = min(a.sparse_block_size, a.block_size)
    cfg = dict(vocab_size=n_codes + 1, grid=list(arr.shape[1:]), block_size=window, n_layer=a.n_layer, n_head=a.n_head,
               n_embd=a.n_embd, dropout=a.dropout, pos_emb="1d" if a.use_1d_pos_emb else "3d")
    fit_lm(a, "gpt", cfg, arr, n_codes, vae, "train_latent_mdgpt", only_predict_last=a.only_predict_last)


if __name__ == "__main__":
    main()
