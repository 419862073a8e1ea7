"""The shared Trainer: gradient clipping from a start step (GradClip), fused optimizers."""
import csv
from argparse import Namespace
from types import SimpleNamespace

import lightning as L
import pytest
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


class Logs(Tiny):
    def on_save_checkpoint(self, checkpoint):
        checkpoint["minisora"] = {"format_version": 1, "kind": "tiny", "config": {}}

    def training_step(self, batch, i):
        loss = super().training_step(batch, i)
        self.log("train/loss", loss)
        return loss


def _args(tmp_path, *extra):
    import argparse

    from minisora.cli import add_loop_args, add_run_args
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_loop_args(p, samples=False)
    add_run_args(p, project="t")
    return p.parse_args(["--output_dir", str(tmp_path), "--accelerator", "cpu", "--devices", "1", "--precision", "32-true",
                         "--num_workers", "0", "--log_every", "1", "--batch_size", "2", *map(str, extra)])


def _steps(path):
    return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(open(path)) if r.get("train/loss")]


def test_driver_checkpoints_at_stop_and_resume_keeps_metrics_history(tmp_path, recwarn):
    """One driver (training.fit): last.ckpt at the step training stops (not a multiple of --ckpt_every); a run
    resumed from an earlier checkpoint continues in its folder and keeps metrics.csv's rows up to that
    checkpoint (Lightning's CSVLogger wiped them: after a kill -9 only the resumed rows were left)."""
    from minisora.checkpoint import checkpoint_step
    from minisora.training import fit, start_run

    data = TensorDataset(torch.randn(64, 4))
    a = _args(tmp_path, "--max_steps", 5, "--ckpt_every", 2, "--run_name", "r")
    out = start_run(a, "tiny")
    fit(a, Logs(), data, out=out, script="tiny", checkpoints=dict(every_n_train_steps=2, filename="step{step:03d}",
                                                                  save_top_k=-1), enable_progress_bar=False)
    ck = out / "checkpoints"
    assert checkpoint_step(ck / "last.ckpt") == 5 and checkpoint_step(ck / "step002.ckpt") == 2
    first = _steps(out / "metrics.csv")
    assert [s for s, _ in first] == [0, 1, 2, 3, 4]
    # a new run may not reuse the folder; resuming from step 2 continues in it (no --run_name needed)
    with pytest.raises(SystemExit, match="holds another run's checkpoints"):
        start_run(_args(tmp_path, "--run_name", "r"), "tiny")
    b = _args(tmp_path, "--max_steps", 7, "--resume_from", ck / "step002.ckpt")
    assert start_run(b, "tiny") == out and b.run_name == "r"
    fit(b, Logs(), data, out=out, script="tiny", checkpoints=dict(every_n_train_steps=3, filename="step{step:03d}",
                                                                  save_top_k=-1), enable_progress_bar=False)
    assert not list(ck.glob("*-v*.ckpt"))  # other checkpoint settings on resume: still last.ckpt, no last-v1.ckpt
    rows = _steps(out / "metrics.csv")
    assert [s for s, _ in rows] == list(range(7))      # every step once: history up to 2 kept, then the resumed run
    assert rows[:2] == first[:2]                        # the rows before the checkpoint are the first run's own
    assert checkpoint_step(ck / "last.ckpt") == 7
    assert not [w for w in recwarn if "will be deleted" in str(w.message)]  # Lightning's CSVLogger warned so


def test_step_rate_prints_steps_per_second_and_the_eta_of_the_budget(capsys):
    """Each stage says how fast it trains and when it ends: the step budget's ETA, or the time budget's when that
    ends first."""
    from types import SimpleNamespace

    from minisora.training import _step_rate

    cb = _step_rate("x", every_seconds=0)
    timer = type("Timer", (), {"time_remaining": lambda self, stage: 30.0})()
    trainer = SimpleNamespace(global_step=0, max_steps=1000, is_global_zero=True, callbacks=[])
    cb.on_train_start(trainer, None)
    cb.t0 -= 10.0  # 10 s ago
    trainer.global_step = 100  # 10 steps/s: 900 steps left = 1m30s
    cb.on_train_batch_end(trainer, None, None, None, 0)
    assert "[x] step 100/1000, 10.00 steps/s, ETA 1m30s" in capsys.readouterr().out
    trainer.callbacks = [timer]  # a --max_time budget that ends in 30 s comes first
    cb.on_train_batch_end(trainer, None, None, None, 1)
    assert "ETA 0m30s" in capsys.readouterr().out
