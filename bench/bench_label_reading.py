"""How much a class-conditional token model reads its labels, without sampling anything. On the held-out rows of
its tokens file (the last --val_fraction, as training held them out), each clip's first latent frame -- the one
drawn from nothing, where the label has to choose the digit -- is scored teacher-forced (one window from the
clip's start, as LitLM.label_log_likelihood reads it) under the clip's own label set, the null label, and a
wrong label set (every digit replaced by another one):

- nats per clip under each: what the true labels save against the null label is the information the model
  takes from them (at most log 10 = 2.3 nats for a 1-digit clip, the label's own entropy);
- the model's implicit classifier (what classifier-free guidance amplifies): on 1-digit clips, the share whose
  best-scoring single-digit label log p(frame | {d}) is the true digit (chance 10%).

  python bench/bench_label_reading.py --checkpoint runs/train_latent_nanogpt/<run>/checkpoints/best.ckpt [<other> ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisora.cli import Parser
from minisora.data import held_out_rows, multi_hot, stage_labels  # noqa: E402
from minisora.generate import load_generator  # noqa: E402
from minisora.stagefile import load_stage  # noqa: E402


@torch.no_grad()
def label_reading(module, codes: np.ndarray, labels: list[list[int]], batch: int = 16, seed: int = 0) -> dict:
    """codes (N, t, h, w), labels[i] the digits of clip i -> the measures above (first latent frame only)."""
    h, w = codes.shape[2:]
    bos, nc = module.hparams.n_codes, int(module.hparams.model_config["num_classes"])
    rng = np.random.default_rng(seed)
    true, null, wrong, hits = [], [], [], []
    for i in range(0, len(codes), batch):
        c = torch.from_numpy(codes[i:i + batch, 0].reshape(-1, h * w).astype(np.int64))
        seq = torch.cat([torch.full((len(c), 1), bos), c], 1)
        lab = labels[i:i + batch]
        other = [[(d + rng.integers(1, nc)) % nc for d in ds] for ds in lab]
        true.append(module.label_log_likelihood(seq, torch.stack([multi_hot(ds, nc) for ds in lab])))
        null.append(module.label_log_likelihood(seq, None))
        wrong.append(module.label_log_likelihood(seq, torch.stack([multi_hot(ds, nc) for ds in other])))
        single = [k for k, ds in enumerate(lab) if len(set(ds)) == 1]
        if single:
            best = module.single_label_log_likelihoods(seq[single]).argmax(1)
            hits += [int(best[j]) == lab[k][0] for j, k in enumerate(single)]
    true, null, wrong = (torch.cat(x) for x in (true, null, wrong))
    return {"clips": len(codes), "nats_true": float(-true.mean()), "nats_null": float(-null.mean()),
            "nats_wrong": float(-wrong.mean()), "saved_vs_null": float((true - null).mean()),
            "saved_vs_wrong": float((true - wrong).mean()), "one_digit_clips": len(hits),
            "implicit_classifier_accuracy": float(np.mean(hits)) if hits else float("nan")}


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("--checkpoint", nargs="+", required=True, help="class-conditional GPT / Mamba checkpoints")
    p.add_argument("--tokens", default="data/latents/tok.npy", help="the tokens .npy the checkpoints were trained on")
    p.add_argument("--val_fraction", type=float, default=0.05, help="the last fraction of rows (as training held out)")
    p.add_argument("--num_clips", type=int, default=128, help="held-out clips scored (the first of them)")
    a = p.parse_args(argv)
    arr, meta = load_stage(a.tokens, "tokens")
    labels = stage_labels(meta)
    held_out = held_out_rows(len(arr), a.val_fraction)[1]
    rows = held_out[:a.num_clips]
    if not rows:
        sys.exit(f"error: {a.tokens} has {len(arr)} row(s): none held out to score")
    codes = np.asarray(arr[rows.start:rows.stop])
    print("| checkpoint | clips | nats/clip, true labels | null label | wrong labels | saved vs null | saved vs wrong "
          "| implicit classifier (1-digit clips) |\n|---|---|---|---|---|---|---|---|")
    for ck in a.checkpoint:
        module = load_generator(ck)
        if not module.hparams.model_config.get("num_classes"):
            sys.exit(f"error: {ck} is not class-conditional (trained without --class_conditional)")
        r = label_reading(module, codes, [labels[i] for i in rows])
        print(f"| {ck} | {r['clips']} | {r['nats_true']:.1f} | {r['nats_null']:.1f} | {r['nats_wrong']:.1f} | "
              f"{r['saved_vs_null']:.2f} | {r['saved_vs_wrong']:.2f} | {r['implicit_classifier_accuracy']:.3f} "
              f"({r['one_digit_clips']}) |")


if __name__ == "__main__":
    main()
