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

import sys

from minisora.cli import Parser, add_lm_args, add_run_args, training_windows
from minisora.data import NUM_DIGITS, stage_labels, token_splits
from minisora.lit_gpt import LitLM
from minisora.resolve import load_stage_and_vae
from minisora.training import fit, start_run

SCRIPT = "train_latent_mdgpt"


def main(argv=None):
    p = Parser(__doc__)
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
    add_run_args(p, project="flying_mnist")
    a = p.parse_args(argv)
    try:
        arr, meta, vae = load_stage_and_vae(a.tokens_input_file, "tokens", a.vae, SCRIPT)
        n_codes = meta.get("n_codes") or vae.n_codes
        arr = arr[:, :a.num_latent_frames]
        if a.block_size > arr[0].size:
            a.block_size = int(arr[0].size)
            print(f"[{SCRIPT}] block_size capped at {a.block_size} (tokens per cropped video)")
        window = min(a.sparse_block_size, a.block_size)
        cfg = dict(vocab_size=n_codes + 1, grid=list(arr.shape[1:]), block_size=window, n_layer=a.n_layer,
                   n_head=a.n_head, n_embd=a.n_embd, dropout=a.dropout,
                   num_classes=NUM_DIGITS if a.class_conditional else 0, pos_emb="1d" if a.use_1d_pos_emb else "3d")
        labels = stage_labels(meta) if a.class_conditional else None
        train, val = token_splits(arr, a.val_fraction, a.block_size, n_codes, a.eval_interval * a.batch_size *
                                  a.accumulate_grad_batches, a.eval_iters * a.batch_size, a.only_predict_last,
                                  labels=labels,
                                  **training_windows(a, vae))
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    out = start_run(a, SCRIPT)
    module = LitLM.from_flags(a, "gpt", cfg, n_codes, arr, vae, str(out / "samples"), val.rows, labels)
    fit(a, module, train, val, out=out, script=SCRIPT, checkpoints=LitLM.checkpoints)


if __name__ == "__main__":
    main()
