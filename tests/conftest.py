import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

TINY = dict(resolution=64, num_frames=16, min_digits=1, max_digits=2, digit_size_min=14, digit_size_max=22,
            min_speed=1.0, max_speed=4.0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A CPU-small Flying MNIST set: data_dir/tiny/{train,val}, 12 + 4 videos of 16 frames at 64²."""
    from generate_flying_mnist import generate
    from minisora.flying_mnist import FlyingMNISTConfig

    data_dir = tmp_path_factory.mktemp("data")
    generate(FlyingMNISTConfig(**TINY, seed=3), data_dir / "tiny", {"train": 12, "val": 4}, workers=1, progress=False)
    (data_dir / "tiny" / "info.json").write_text('{"generator": {"num_frames": 16}}')
    return data_dir
