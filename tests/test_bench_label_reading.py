"""bench/bench_label_reading.py: a model whose frames are told apart only by their labels reads them fully."""
import numpy as np
import torch

from bench.bench_label_reading import label_reading
from minisora.lit_gpt import LitLM
from test_lm import overfit_labelled
from models.gpt import GPTConfig


def test_label_reading_of_a_model_that_learned_its_labels():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=33, grid=(2, 2, 4), block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                    num_classes=10, class_dropout=0.3)
    module = LitLM("gpt", cfg.to_dict(), 32, [2, 2, 4], "none")
    frames = torch.randint(1, 32, (10, 8))  # digit d: its own random codes, still
    seqs = torch.cat([torch.full((10, 1), 32), frames, frames], 1)
    overfit_labelled(module.model, seqs, torch.eye(10), 400)
    module.eval()
    codes = seqs[:, 1:].reshape(10, 2, 2, 4).numpy()
    r = label_reading(module, codes, [[d] for d in range(10)], batch=4)
    assert r["clips"] == 10 and r["one_digit_clips"] == 10 and r["implicit_classifier_accuracy"] == 1.0
    # the labels pick the frame: they save nats against the null label, and more against a wrong label
    assert r["saved_vs_null"] > 1.0 and r["saved_vs_wrong"] > r["saved_vs_null"]
    assert np.isclose(r["nats_null"] - r["nats_true"], r["saved_vs_null"], atol=1e-4)
    # an untrained model reads nothing: chance-level classifier, ~0 nats saved
    fresh = LitLM("gpt", cfg.to_dict(), 32, [2, 2, 4], "none").eval()
    r0 = label_reading(fresh, codes, [[d] for d in range(10)])
    assert abs(r0["saved_vs_null"]) < 0.5 and r0["implicit_classifier_accuracy"] <= 0.5
