"""Train a GPT (next-token predictor) on the VQ codes of videos (tokens .npy from tokenize_videos.py);
sample whole videos with a KV cache and decode them with the VQ-VAE.

  python train_latent_nanogpt.py --block_size 512 --tokens_input_file data/latents/flying_mnist__model-kbu39ped_tokens_32frames_train.npy \\
      --sample_interval 2000 --batch_size 8 --gradient_accumulation_steps 4 --max_iters 10000000 --wandb_log

The vocabulary is the codebook (n_codes + BOS), positions are absolute (t, h, w) of the code grid,
so the sliding window (block_size) keeps every token's position. Samples also continue a real val video
from its first --prompt_frames latent frames.
"""
from __future__ import annotations

import functools
import sys
import time

from minisora.cli import Parser, add_lm_args, add_run_args, training_windows
from minisora.data import NUM_DIGITS, stage_labels, token_splits
from minisora.lit_gpt import LitLM
from minisora.resolve import load_stage_and_vae
from minisora.training import fit, start_run
from models.gpt import GPTConfig, context_positions
from models.motion import ink_maps

SCRIPT = "train_latent_nanogpt"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--mamba" in argv:  # upstream's switch: the same code and flags as train_latent_mamba.py
        import train_latent_mamba
        return train_latent_mamba.main([x for x in argv if x != "--mamba"], script=SCRIPT)
    p = Parser(__doc__)
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
    m.add_argument("--prev_frames", type=int, default=0,
                   help="> 0: each token also reads the codes around its cell in this many previous frames (a causal "
                        "convolution over earlier frames: what carries a moving digit forward)")
    m.add_argument("--prev_radius", type=int, default=2, help="with --prev_frames: cells each side ((2r+1)^2 per frame)")
    m.add_argument("--same_frame", action="store_true",
                   help="with --prev_frames: also the cells already generated around it in its own frame (the cells "
                        "above and to its left within --prev_radius)")
    m.add_argument("--read_ink", action="store_true",
                   help="motion tokens (tokenize_videos.py --motion_tokens): each token also reads which cells of the "
                        "previous decoded frame hold ink (the sampler decodes each frame as it completes), so a motion "
                        "token knows the pixels it moves; models/motion.py)")
    m.add_argument("--ink_radius", type=int, default=2, help="with --read_ink: cells each side ((2r+1)^2)")
    m.add_argument("--ink_edges", action="store_true",
                   help="with --read_ink: cells off the frame read -1 instead of 0 (no ink), so the edge a digit "
                        "bounces off is seen with the ink")
    m.add_argument("--mamba", action="store_true",
                   help="train a Mamba instead: runs train_latent_mamba.py with the other flags (see its --help)")
    add_lm_args(p)
    add_run_args(p, project="flying_mnist")
    a = p.parse_args(argv)
    if (a.ink_edges or a.ink_radius != 2) and not a.read_ink:
        p.error("--ink_edges / --ink_radius shape what --read_ink reads: they need --read_ink")
    try:
        arr, meta, vae = load_stage_and_vae(a.tokens_input_file, "tokens", a.vae, SCRIPT)
        n_codes = meta.get("n_codes") or vae.n_codes
        cfg = dict(vocab_size=n_codes + 1, grid=list(arr.shape[1:]), block_size=a.block_size, n_layer=a.n_layer,
                   n_head=a.n_head, n_embd=a.n_embd, dropout=a.dropout,
                   num_classes=NUM_DIGITS if a.class_conditional else 0, pos_emb=a.pos_emb,
                   prev_frames=a.prev_frames, prev_radius=a.prev_radius, same_frame=a.same_frame,
                   read_ink=a.read_ink, ink_radius=a.ink_radius,
                   ink_edges=a.ink_edges)
        context = None
        if a.sparse_context_window:
            cfg.update(context_stride=a.context_stride, context_dense=a.context_stride_start)
            context = functools.partial(context_positions, block_size=a.block_size, stride=a.context_stride,
                                        dense=a.context_stride_start)
        GPTConfig(**cfg)  # validates
        ink = None
        if a.read_ink:
            t0 = time.time()
            ink = ink_maps(arr, vae)  # ValueError unless motion tokens
            print(f"[{SCRIPT}] ink maps of {len(arr)} clips' decoded frames: {time.time() - t0:.0f} s")
        labels = stage_labels(meta) if a.class_conditional else None
        train, val = token_splits(arr, a.val_fraction, a.block_size, n_codes, a.eval_interval * a.batch_size *
                                  a.accumulate_grad_batches, a.eval_iters * a.batch_size, context=context,
                                  labels=labels,
                                  with_history=a.prev_frames > 0, ink=ink,
                                  **training_windows(a, vae))
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    out = start_run(a, SCRIPT)
    module = LitLM.from_flags(a, "gpt", cfg, n_codes, arr, vae, str(out / "samples"), val.rows, labels)
    fit(a, module, train, val, out=out, script=SCRIPT, checkpoints=LitLM.checkpoints)


if __name__ == "__main__":
    main()
