"""bench/fmd_ladder.py's rungs: each degrades real videos the way it says, keeping their shape and dtype."""
import numpy as np

from bench.fmd_ladder import blur, grey, strokes, temporal_average


def test_ladder_rungs_degrade_as_named():
    rng = np.random.default_rng(0)
    v = np.zeros((2, 8, 16, 16, 3), np.uint8)
    v[:, :, 4:12, 4:12] = rng.integers(100, 256, (1, 1, 1, 1, 3))  # a coloured square
    v[:, 4:, 4:12, 4:12] = 0
    v[:, 4:, 6:14, 6:14] = 200  # it moves in the second half
    for f in (temporal_average, blur, grey, strokes):
        out = f(v)
        assert out.shape == v.shape and out.dtype == np.uint8, f.__name__
    avg = temporal_average(v)
    assert (avg[:, 0] == avg[:, 3]).all() and not (avg[:, 3] == avg[:, 4]).all()  # one frame per 4-frame group
    assert np.ptp(grey(v).astype(int), axis=-1).max() == 0  # no chroma left
    ink, kept = (v.max(-1) > 0).sum(), (strokes(v).max(-1) > 0).sum()
    assert 0.2 * ink < kept < 0.8 * ink  # about half the ink gone
    assert blur(v)[:, :, 4, 4].mean() < v[:, :, 4, 4].mean()  # the square's corner softened
