"""The shared Trainer: gradient clipping from a start step (GradClip), fused optimizers."""
import csv
from argparse import Namespace
from types import SimpleNamespace

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from minisora.training import adamw, can_fuse, make_trainer


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(4, 4)
        self.seen = []  # global grad norm as the optimizer will see it (module hook runs after callbacks)

    def training_step(self, batch, i):
        return (self.model(batch[0]) * 100).pow(2).mean()

    def on_before_optimizer_step(self, optimizer):
        self.seen.append(float(torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters()])))

    def configure_optimizers(self):
        return adamw(self.model, 1e-3, fused=can_fuse(self.trainer))


def test_grad_clip_from_start_step_logs_norm_and_fuses(tmp_path):
    args = Namespace(devices="1", accelerator="cpu", num_nodes=1, precision="bf16-mixed", track=False, project="t")
    trainer = make_trainer(args, tmp_path, clip_grad=0.5, clip_start=2, max_steps=4, log_every_n_steps=1,
                           enable_checkpointing=False, enable_progress_bar=False)
    module = Tiny()
    trainer.fit(module, DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=2))
    assert len(module.seen) == 4
    assert min(module.seen[:2]) > 1.0, module.seen          # before clip_start: untouched
    assert max(module.seen[2:]) <= 0.5 + 1e-4, module.seen  # from clip_start on: clipped to 0.5
    assert trainer.optimizers[0].defaults["fused"] is True
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    logged = [float(r["train/grad_norm"]) for r in rows if r.get("train/grad_norm")]
    assert len(logged) == 4 and min(logged) > 1.0  # the norm before clipping is logged


def test_no_fused_optimizer_under_a_grad_scaler():
    assert can_fuse(SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None)))
    assert not can_fuse(SimpleNamespace(precision_plugin=SimpleNamespace(scaler=torch.amp.GradScaler("cpu"))))
