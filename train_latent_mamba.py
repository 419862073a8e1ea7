"""Train a Mamba language model on the VQ codes of videos; sample with recurrent states (constant cost per
token) using temperature / top-k / top-p (upstream sampled greedily and never saved a checkpoint).

  python train_latent_mamba.py --n_layer 32 --n_embed 1280 --batch_size 8 --gradient_accumulation_steps 1 --block_size 512 --track

Uses the mamba-ssm CUDA kernels when installed (Dockerfile: --build-arg WITH_MAMBA_KERNELS=1), else a
pure-PyTorch selective scan. Windows never cross video boundaries. Tokens carry absolute (t, h, w) positions
and every training window starts from a zero state at a random offset; generation does the same (its state
restarts within --block_size windows), so sampling never runs past what training showed.
"""
from __future__ import annotations

import sys

from minisora.cli import Parser, add_lm_args, add_run_args, training_windows
from minisora.data import NUM_DIGITS, stage_labels, token_splits
from minisora.lit_gpt import LitLM
from minisora.resolve import load_stage_and_vae
from minisora.training import fit, start_run


def main(argv=None, script: str = "train_latent_mamba"):
    p = Parser(__doc__)
    m = p.add_argument_group("model")
    m.add_argument("--n_layer", type=int, default=8)
    m.add_argument("--n_embed", "--n_embd", dest="n_embed", type=int, default=768, help="d_model (upstream spells it n_embed)")
    m.add_argument("--d_state", type=int, default=16)
    m.add_argument("--d_conv", type=int, default=4)
    m.add_argument("--expand", type=int, default=2)
    m.add_argument("--no_kernels", action="store_true", help="force the pure-PyTorch scan even if mamba-ssm is installed")
    add_lm_args(p)
    add_run_args(p, project="flying_mnist")
    p.set_defaults(eval_interval=100, eval_iters=20, sample_every=1000, min_lr=1e-5, weight_decay=0.01)
    a = p.parse_args(argv)
    try:
        arr, meta, vae = load_stage_and_vae(a.tokens_input_file, "tokens", a.vae, script)
        n_codes = meta.get("n_codes") or vae.n_codes
        labels = stage_labels(meta) if a.class_conditional else None
        train, val = token_splits(arr, a.val_fraction, a.block_size, n_codes, a.eval_interval * a.batch_size *
                                  a.accumulate_grad_batches, a.eval_iters * a.batch_size,
                                  labels=labels,
                                  **training_windows(a, vae))
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
    cfg = dict(vocab_size=n_codes + 1, d_model=a.n_embed, n_layer=a.n_layer, d_state=a.d_state, d_conv=a.d_conv,
               expand=a.expand, use_kernels=not a.no_kernels, grid=list(arr.shape[1:]), block_size=a.block_size,
               num_classes=NUM_DIGITS if a.class_conditional else 0)
    out = start_run(a, script)
    module = LitLM.from_flags(a, "mamba", cfg, n_codes, arr, vae, str(out / "samples"), val.rows, labels)
    fit(a, module, train, val, out=out, script=script, checkpoints=LitLM.checkpoints)


if __name__ == "__main__":
    main()
