"""GPT / Mamba on VQ codes: KV cache == recompute, causality, overfit, seed commands, checkpoint -> sample, resume."""
import functools
import json
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run
from minisora.data import TokenWindows, token_splits
from minisora.video_io import read_video
from models.gpt import GPT, GPTConfig, TokenSampling, below, context_positions, sample_logits
from models.mamba import MambaConfig, MambaLM, selective_scan, selective_scan_ref


def tiny_gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=33, grid=(2, 4, 4), block_size=12, n_layer=2, n_head=2, n_embd=32,
                                   dropout=0.0), **kw})).eval()


def overfit_labelled(model, seqs: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """Teacher-forced Adam steps of a class-conditional token model on sequences [BOS, ...] with label sets y."""
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(steps):
        _, loss = model(seqs[:, :-1], targets=seqs[:, 1:], y=y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_cached_sampling_stays_in_the_trained_window(monkeypatch):
    """Past the first window (49-token videos, block_size 8: several windows), each prediction of cached sampling
    equals a forward pass over one window of <= block_size tokens computed from scratch (as in training: the
    first 8 tokens, then re-anchored to the last 4 when full), no pass reads more than block_size tokens or
    keys, and the uncached reference gives the same tokens. (A sliding cache fails the first check.)"""
    import models.gpt as gpt

    m = tiny_gpt(grid=(3, 4, 4), block_size=8)
    seen, reads = [], []
    real_sample, forward = gpt.sample_logits, m.forward
    monkeypatch.setattr(gpt, "sample_logits", lambda logits, *a, **k: seen.append(logits) or real_sample(logits, *a, **k))

    def spy(idx, start=0, caches=None, **kw):
        out = forward(idx, start=start, caches=caches, **kw)
        reads.append(max(idx.shape[1], caches[0]["k"].shape[2] if caches else 0))
        return out
    monkeypatch.setattr(m, "forward", spy)
    prompt = torch.tensor([[32, 5, 7], [32, 2, 9]])
    a = m.generate(prompt, 46, generator=torch.Generator().manual_seed(1), use_cache=True)
    b = m.generate(prompt, 46, generator=torch.Generator().manual_seed(1), use_cache=False)
    assert a.shape == (2, 49) and torch.equal(a, b) and max(reads) <= 8
    anchor = 0
    for n in range(3, 49):  # the prediction of position n
        if n - anchor > 8:
            anchor = n - 4
        ref = forward(a[:, anchor:n], start=anchor)[0][:, -1]
        assert torch.allclose(seen[n - 3], ref, atol=1e-4), n


def test_mamba_generation_stays_in_the_trained_window():
    """Mamba with positions and block_size 8: each prediction equals a parallel (training-mode) pass over its
    window from a zero state, past the first window too; the position of a window matters (start is used)."""
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=33, d_model=16, n_layer=2, grid=(3, 4, 4), block_size=8, use_kernels=False)).eval()
    x = torch.randint(0, 32, (2, 6))
    assert not torch.allclose(m(x, start=1)[0], m(x, start=20)[0])
    seen = []
    import models.gpt as gpt
    real = gpt.sample_logits
    gpt.sample_logits = lambda logits, *a, **k: seen.append(logits) or real(logits, *a, **k)
    try:
        out = m.generate(torch.tensor([[32, 5, 7], [32, 2, 9]]), 46, generator=torch.Generator().manual_seed(0))
    finally:
        gpt.sample_logits = real
    anchor = 0
    for n in range(3, 49):
        if n - anchor > 8:
            anchor = n - 4
        ref = m(out[:, anchor:n], start=anchor)[0][:, -1]
        assert torch.allclose(seen[n - 3], ref, atol=1e-4), n


@pytest.mark.parametrize("pos_emb", ["3d", "1d"])
def test_kv_cache_matches_full_recompute(pos_emb):
    m = tiny_gpt(pos_emb=pos_emb)
    prompt = torch.tensor([[32, 5, 7, 1], [32, 2, 2, 9]])
    a = m.generate(prompt, 8, TokenSampling(temperature=0), use_cache=True)  # 12 tokens = block_size
    b = m.generate(prompt, 8, TokenSampling(temperature=0), use_cache=False)
    assert a.shape == (2, 12) and torch.equal(a, b)
    caches = [{"max": 11} for _ in m.blocks]
    m(a[:, :4], start=0, caches=caches)
    for i in range(4, 12):  # each cached decode step gives the logits of a full forward pass
        step, _ = m(a[:, i:i + 1], start=i, caches=caches)
        full, _ = m(a[:, :i + 1], start=0)
        assert torch.allclose(step[:, -1], full[:, -1], atol=1e-5)
    # past block_size the window is re-anchored: every token keeps its absolute position, codes stay in range
    long = m.generate(prompt, 29, TokenSampling(top_k=10), generator=torch.Generator().manual_seed(0),
                      processors=(below(32),))
    assert long.shape == (2, 33) and int(long[:, 1:].max()) < 32


def test_sparse_context_window():
    assert context_positions(5, 8, 2, 3) == [0, 1, 2, 3, 4]                      # short sequence: all of it
    assert context_positions(10, 8, 2, 3) == list(range(2, 10))                # not yet the sparse span (13)
    assert context_positions(13, 8, 2, 3) == [0, 2, 4, 6, 8, 10, 11, 12]       # 5 strided + 3 dense
    assert context_positions(20, 8, 2, 3) == [7, 9, 11, 13, 15, 17, 18, 19]
    assert context_positions(20, 8) == list(range(12, 20))                    # stride 1: the dense window
    arr = torch.arange(2 * 2 * 4 * 4).view(2, 2, 4, 4).numpy() % 32             # 2 videos of 32 codes
    ds = TokenWindows(arr, range(2), block_size=8, bos=32, samples_per_epoch=50,
                      context=functools.partial(context_positions, block_size=8, stride=2, dense=3))
    seqs = [[32] + arr[r].reshape(-1).tolist() for r in range(2)]
    for i in range(50):
        it = ds[i]
        pos = it["start"].tolist()
        assert len(pos) == 8 and pos == context_positions(pos[-1] + 1, 8, 2, 3)
        assert it["x"].tolist() == [seqs[it["row"]][p] for p in pos] and it["y"].tolist() == [seqs[it["row"]][p + 1] for p in pos]
    m = tiny_gpt(context_stride=2, context_dense=3, block_size=8)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    logits, loss = m(batch["x"], start=batch["start"], targets=batch["y"])
    assert logits.shape == (2, 8, 33) and torch.isfinite(loss)
    prompt = torch.tensor([[32, 5, 7, 1]])
    out = m.generate(prompt, 29, TokenSampling(temperature=0), processors=(below(32),))
    # each new token is predicted from exactly the sparse context the training windows use
    for length in (12, 20, 32):
        pos = torch.tensor(context_positions(length, 8, 2, 3))
        ref, _ = m(out[:, pos], start=pos[None])
        assert int(ref[0, -1, :32].argmax()) == int(out[0, length])
    with pytest.raises(ValueError, match="context_dense"):
        GPTConfig(block_size=8, context_stride=2, context_dense=8)


def test_training_windows_cover_the_first_frame_as_often_as_the_middle():
    """Every token, the first latent frame and BOS-led window included, is in a window at least as often as a
    middle one (uniform valid starts trained the first frame of a 16-frame clip ~4x less at block 512)."""
    arr = np.zeros((1, 16, 4, 4), np.int64)  # one video, 256 codes + BOS = 257 positions
    ds = TokenWindows(arr, range(1), block_size=32, bos=32)
    g = torch.Generator().manual_seed(0)
    starts = np.array([ds.window_start(g) for _ in range(20000)])
    assert starts.min() == 0 and starts.max() == 257 - 32 - 1  # every window fits: block + 1 tokens
    cover = np.zeros(257 - 1)
    for s, n in zip(*np.unique(starts, return_counts=True)):
        cover[s:s + 32] += n
    middle = cover[100:150].mean()
    assert cover.min() > 0.9 * middle                         # no position starved (was 1/225 of windows at p=0)
    assert cover[:16].mean() > 1.1 * middle                   # the first frame gets more, not ~4x less
    assert (starts == 0).mean() > 0.1                         # windows that begin at BOS, as sampling does


def test_first_frame_windows_start_a_clip_cut_at_a_latent_frame():
    arr = np.random.default_rng(0).integers(0, 32, (2, 6, 2, 2))  # 2 videos of 6 latent frames of 4 codes
    seqs = [[32] + arr[r].reshape(-1).tolist() for r in range(2)]
    ds = TokenWindows(arr, range(2), block_size=8, bos=32, labels=[[3], [5, 7]], with_history=True,
                      first_frame_windows=1.0)
    ks = set()
    for i in range(200):
        it = ds[i]
        assert it["start"] == 0 and it["x"][0] == 32                     # always the window at BOS
        codes = seqs[it["row"]][1:]
        k = next(k for k in range(6) if codes[4 * k:4 * k + 8] == it["x"][1:].tolist() + [int(it["y"][-1])])
        ks.add(k)
        assert it["seq"].tolist() == [32] + codes[4 * k:] + [32] * 4 * k  # history: nothing before frame k (padded)
        assert it["y"].tolist() == codes[4 * k:4 * k + 8]
        assert it["labels"].nonzero().view(-1).tolist() == ([3] if it["row"] == 0 else [5, 7])
    assert ks == {0, 1, 2, 3, 4}                                         # every cut that leaves a full window
    batch = torch.utils.data.default_collate([ds[i] for i in range(16)])  # cut and whole clips batch together
    m = tiny_gpt(block_size=8, prev_frames=1, grid=(6, 2, 2), num_classes=10)
    _, loss = m(batch["x"], start=batch["start"], targets=batch["y"], y=batch["labels"], history=batch["seq"])
    assert torch.isfinite(loss)
    mixed = TokenWindows(arr, range(2), block_size=8, bos=32, first_frame_windows=0.5)
    assert 0.4 < np.mean([mixed[i]["start"] == 0 for i in range(400)]) < 0.8
    with pytest.raises(ValueError, match="fraction"):
        TokenWindows(arr, range(2), block_size=8, bos=32, first_frame_windows=1.5)


def test_motion_token_windows_keep_codes_in_the_first_frame():
    """Motion tokens (codes in frame 0, motion tokens after): a first-frame window starts the clip at frame 0 (a
    later frame cut to the front would put motion tokens at the first frame's positions); the flag comes from the
    tokenizer (training_windows)."""
    from types import SimpleNamespace
    from minisora.cli import training_windows
    rng = np.random.default_rng(0)
    arr = np.concatenate([rng.integers(0, 10, (3, 1, 2, 2)), rng.integers(10, 19, (3, 5, 2, 2))], axis=1)
    ds = TokenWindows(arr, range(3), block_size=12, bos=19, with_history=True, first_frame_windows=0.5,
                      motion_tokens=True)
    for i in range(300):
        it = ds[i]
        seq = it["seq"].numpy()
        assert (seq[1:5] < 10).all() and (seq[5:] >= 10).all()          # never cut: codes first, motion after
        if it["start"] == 0:
            assert (it["y"][:4] < 10).all()                              # the first frame's targets are codes
    a = SimpleNamespace(first_frame_windows=0.3)
    assert training_windows(a, SimpleNamespace(config={"motion_radius": 5}))["motion_tokens"]
    assert not training_windows(a, SimpleNamespace(config={"quantize": "fsq"}))["motion_tokens"]


def test_no_future_leakage():
    m = tiny_gpt()
    x = torch.randint(0, 32, (1, 12))
    y = x.clone()
    y[0, 7:] = torch.randint(0, 32, (5,))
    la, _ = m(x)
    lb, _ = m(y)
    assert torch.allclose(la[:, :7], lb[:, :7], atol=1e-6) and not torch.allclose(la[:, 7:], lb[:, 7:])


def test_prev_frames_read_the_cells_around_in_earlier_frames_only():
    """prev_frames: a token's input reads codes around its cell in earlier frames, through `history` even when
    they lie before the window; nothing later leaks in; position p (predicting code p) reads only positions <= p."""
    m = tiny_gpt(grid=(3, 4, 4), block_size=8, prev_frames=2, prev_radius=1)
    table = m.neighbours.table  # (48 codes, 2 frames x 9 offsets): sequence positions read, -1 = outside
    assert table.shape == (48, 18) and (table[:16] == -1).all()  # frame 0 has nothing before it
    assert ((table < torch.arange(48)[:, None] + 1)).all()
    assert set(table[16 + 5].tolist()) == {1 + c for c in (0, 1, 2, 4, 5, 6, 8, 9, 10)} | {-1}  # cell (1,1) of frame 1
    seq = torch.cat([torch.full((1, 1), 32), torch.randint(0, 32, (1, 48))], 1)
    window = lambda h: m(h[:, 30:38], start=30, history=h)[0]  # positions 30..37: frame 1, cells 14..15 and frame 2
    changed = seq.clone()
    changed[0, 1 + 5] = (seq[0, 1 + 5] + 1) % 32  # code 5 = frame 0, cell (1, 1): outside the window
    a, b = window(seq), window(changed)
    # position p reads cells around code p: p = 30 -> code 30 = frame 1, cell (3, 2): dy = 2 from (1, 1): unread;
    # p = 37 -> code 37 = frame 2, cell (1, 1): reads frame 0 cell (1, 1) (dt = 2)
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6) and not torch.allclose(a[:, 7], b[:, 7], atol=1e-4)
    later = seq.clone()
    later[0, 40:] = (seq[0, 40:] + 1) % 32  # after the window: changes nothing in it
    assert torch.allclose(window(seq), window(later), atol=1e-6)
    with pytest.raises(ValueError, match="history"):
        m(seq[:, 30:38], start=30)
    own = tiny_gpt(grid=(3, 4, 4), block_size=8, prev_frames=1, prev_radius=1, same_frame=True)
    table = own.neighbours.table  # 9 cells of the frame before + 4 of its own (3 above, 1 left)
    assert table.shape == (48, 13) and (table <= torch.arange(48)[:, None]).all()
    assert set(table[16 + 5, 9:].tolist()) == {1 + c for c in (16, 17, 18, 20)}  # frame 1, cell (1, 1)
    for q in range(1, 48):  # a change at position q reaches no earlier output (whole-sequence window)
        changed = seq.clone()
        changed[0, q] = (seq[0, q] + 1) % 32
        a, b = own(seq[:, :48], history=seq)[0], own(changed[:, :48], history=changed)[0]
        assert torch.allclose(a[:, :q], b[:, :q], atol=1e-6), q
    with pytest.raises(ValueError, match="too short"):
        m(seq[:, 30:38], start=30, history=seq[:, :20])
    arr = seq[0, 1:].view(1, 3, 4, 4).numpy()  # training windows carry the whole sequence only when asked
    assert "seq" not in TokenWindows(arr, range(1), block_size=8, bos=32)[0]
    assert TokenWindows(arr, range(1), block_size=8, bos=32, with_history=True)[0]["seq"].tolist() == seq[0].tolist()


def test_prev_frames_sampling_equals_training_windows():
    """With prev_frames, cached and uncached sampling agree, and each prediction equals the training-style
    forward of its window with the sequence so far as history."""
    m = tiny_gpt(grid=(3, 4, 4), block_size=8, prev_frames=1, prev_radius=1)
    check_sampling_equals_training_windows(m, lambda seq: {"history": seq})


def check_sampling_equals_training_windows(m, inputs, **generate_kw) -> torch.Tensor:
    """A (3, 4, 4)-grid GPT with block 8 samples 46 tokens cached and uncached (the same draws), and every
    prediction equals the training-style forward of its window; inputs(sequence) -> that forward's keywords."""
    import models.gpt as gpt

    seen, real = [], gpt.sample_logits
    gpt.sample_logits = lambda logits, *a, **k: seen.append(logits) or real(logits, *a, **k)
    try:
        prompt = torch.tensor([[32, 5, 7], [32, 2, 9]])
        a = m.generate(prompt, 46, generator=torch.Generator().manual_seed(1), **generate_kw)
        b = m.generate(prompt, 46, generator=torch.Generator().manual_seed(1), use_cache=False, **generate_kw)
    finally:
        gpt.sample_logits = real
    assert torch.equal(a, b)
    anchor = 0
    for n in range(3, 49):
        if n - anchor > 8:
            anchor = n - 4
        ref = m(a[:, anchor:n], start=anchor, **inputs(a))[0][:, -1]
        assert torch.allclose(seen[n - 3], ref, atol=1e-4), n
    return a


def test_read_ink_reads_the_previous_decoded_frame_and_sampling_equals_training_windows():
    """read_ink: the token predicting a cell of frame t reads the ink map of frame t - 1 only (frame 0 reads
    nothing); cached and uncached sampling agree, and each prediction equals the training-style forward of its
    window with the ink map of the whole sequence (an ink map of frame f depends on frames <= f only)."""
    m = tiny_gpt(grid=(3, 4, 4), block_size=8, read_ink=True, ink_radius=1)
    x = torch.randint(0, 32, (1, 47))
    ink = torch.zeros(1, 48)
    base = m(x, ink=ink)[0]
    ink[:, 16:32] = 1  # frame 1 all ink: only the positions predicting frame 2 (32..46) read it
    moved = (m(x, ink=ink)[0] - base).abs().amax(-1)[0]
    assert moved[:32].max() == 0 and (moved[32:] > 0).all()
    with pytest.raises(ValueError, match="ink"):
        m(x)
    edges = tiny_gpt(grid=(3, 4, 4), block_size=8, read_ink=True, ink_radius=1, ink_edges=True)
    edges.load_state_dict(m.state_dict())
    pos = torch.arange(48)[None]
    differ = (edges.prev_ink(ink, pos) - m.prev_ink(ink, pos)).abs().amax(-1)[0].view(3, 4, 4) > 0
    inner = torch.zeros(4, 4, dtype=torch.bool)
    inner[1:3, 1:3] = True  # the cells whose 3x3 neighbourhood lies inside the 4x4 frame
    assert not differ[0].any() and (differ[1:] == ~inner).all()  # frame 0 reads nothing; later the edge reads -1

    def ink_fn(seq):  # a stand-in for InkTracker: frame f's cells "hold ink" where its tokens are odd
        out = torch.zeros(len(seq), 48)
        done = (seq.shape[1] - 1) // 16 * 16
        out[:, :done] = (seq[:, 1:1 + done] % 2).float()
        return out

    check_sampling_equals_training_windows(m, lambda seq: {"ink": ink_fn(seq)}, reader=lambda seq: {"ink": ink_fn(seq)})
    with pytest.raises(ValueError, match="reader"):
        m.generate(torch.tensor([[32, 5]]), 4)


def test_ink_tracker_decodes_as_it_goes_and_matches_the_training_ink_maps(monkeypatch):
    """InkTracker (sampling) gives the ink maps ink_maps (training) computes from whole clips, one frame at a time:
    frames not yet complete read 0; a plain (code-every-frame) tokenizer is refused."""
    from dataclasses import asdict
    import models.motion as motion
    from minisora.resolve import VAEHandle
    from models.motion import InkTracker, cell_ink, ink_maps
    from models.vqvae import VideoVAE, make_config

    torch.manual_seed(0)
    cfg = make_config("s4t1_m_vq", channels=(8, 8, 8), n_codes=16, motion_radius=1)
    vae = VideoVAE(cfg).eval()
    # a first frame whose ink is known: the cells of odd codes lit (a random decoder lights everything)
    monkeypatch.setattr(motion, "decode_still", lambda vae, codes: ((codes % 2) * 2.0 - 1).repeat_interleave(
        4, 1).repeat_interleave(4, 2)[:, None].expand(-1, 3, -1, -1))
    handle = VAEHandle(module=vae, kind="project", reference="t", name="t", latent_channels=cfg.embedding_dim,
                       temporal_stride=1, spatial_stride=4, quantize=True, n_codes=cfg.n_tokens, config=asdict(cfg))
    tokens = np.concatenate([np.random.default_rng(0).integers(0, 16, (3, 1, 4, 4)),
                             np.random.default_rng(1).integers(16, 25, (3, 3, 4, 4))], 1)
    maps = ink_maps(tokens, handle, batch_size=2)
    assert maps.shape == (3, 64) and maps.dtype == np.uint8 and 0 < maps.mean() < 1
    assert (maps[:, :16] == tokens[:, 0].reshape(3, 16) % 2).all()  # frame 0: the odd codes' cells
    video = vae.decode_codes(torch.from_numpy(tokens))  # the whole clips decoded at once
    assert (maps == cell_ink(video.transpose(1, 2).flatten(0, 1), 4).reshape(3, 64).numpy()).all()
    seq = torch.cat([torch.full((3, 1), 25), torch.from_numpy(tokens).flatten(1)], 1)
    tracker = InkTracker(vae, (4, 4, 4))
    part = tracker(seq[:, :1 + 16 + 5])  # frame 0 complete, frame 1 not
    assert torch.equal(part[:, :16], torch.from_numpy(maps[:, :16]).float()) and (part[:, 16:] == 0).all()
    assert torch.equal(tracker(seq), torch.from_numpy(maps).float())
    assert torch.equal(InkTracker(vae, (4, 4, 4))(seq), torch.from_numpy(maps).float())
    plain = VAEHandle(module=vae, kind="project", reference="p", name="p", latent_channels=4, temporal_stride=1,
                      spatial_stride=4, quantize=True, n_codes=16, config={"motion_radius": 0})
    with pytest.raises(ValueError, match="motion tokens"):
        ink_maps(tokens, plain)


def test_sampling_filters():
    """sample_logits over gently sloped logits (every token between 8.6% and 17.3%; the ranks shuffled over the
    vocabulary): 4000 seeded draws per setting. Unfiltered, every token appears at its softmax frequency; top_k=k
    gives exactly the k largest, top_p exactly the smallest prefix (by probability) whose mass reaches p, each at
    its renormalised frequency; temperature sharpens; the processor below(n) keeps tokens < n; temperature 0 is
    the argmax."""
    rank = torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])  # token i is the rank[i]-th smallest
    logits = 0.1 * rank.float()[None]
    n, vocab = 4000, logits.shape[1]
    by_prob = rank.argsort(descending=True).tolist()  # tokens from the most to the least likely: 1, 5, 3, 7, ...

    def draw(allowed=None, **kw):
        x = logits.expand(n, -1) if allowed is None else below(allowed)(None, logits.expand(n, -1))
        out = sample_logits(x, TokenSampling(**kw), generator=torch.Generator().manual_seed(0))
        assert out.shape == (n, 1)
        return out.flatten()

    def check(tokens, keep, temperature=1.0):
        """tokens drawn are exactly `keep`, at the frequencies of softmax(logits / temperature) renormalised."""
        assert set(tokens.tolist()) == set(keep), sorted(set(tokens.tolist()))
        want = torch.zeros(vocab)
        want[keep] = (logits[0, keep] / temperature).softmax(-1)
        got = torch.bincount(tokens, minlength=vocab).float() / n
        assert (got - want).abs().max() < 0.025, (got, want)

    check(draw(), list(range(vocab)))
    for k in (1, 2, 3, 5):
        check(draw(temperature=1.0, top_k=k), by_prob[:k])
    cum = logits[0, by_prob].softmax(-1).cumsum(-1).tolist()  # mass of the m most likely tokens: cum[m - 1]
    for m in range(1, vocab):
        check(draw(top_p=(cum[m - 1] + cum[m]) / 2), by_prob[:m + 1])   # needs m + 1 tokens to reach p
        check(draw(top_p=cum[m - 1] - 1e-3), by_prob[:m])              # just below the mass of m: m tokens
        check(draw(top_p=cum[m - 1] + 1e-3), by_prob[:m + 1])          # just above: one more
    # top_p applies to the top_k tokens, renormalised: 4 kept, their 2 most likely hold 55% of that mass
    check(draw(top_k=4, top_p=0.5), by_prob[:2])
    check(draw(temperature=0.25), list(range(vocab)), temperature=0.25)  # sharper: 2.1% .. 34.4%
    check(draw(allowed=3), [0, 1, 2])
    check(draw(allowed=3, top_k=2), [0, 1])  # the 2 most likely of the allowed tokens (not 1 and 5)
    greedy = TokenSampling(temperature=0)
    assert sample_logits(logits, greedy).tolist() == [[1]] and sample_logits(below(1)(None, logits), greedy).tolist() == [[0]]


def test_ink_temperature_keeps_the_background_odds():
    """ink_temperature with background codes {0, 2}: background is drawn as often as the plain distribution draws
    it (each background code at its own share), the digit codes at softmax(logits / ink_temperature) over what is
    left; 0 draws the most likely digit code; a top-k that keeps only background codes draws only those."""
    logits = torch.tensor([[2.0, 0.5, 1.5, 1.0, 0.0, 0.8]])
    bg = torch.tensor([True, False, True, False, False, False])
    n = 6000

    def freq(**kw):
        out = sample_logits(logits.expand(n, -1), TokenSampling(**kw), torch.Generator().manual_seed(0), bg)
        return torch.bincount(out.flatten(), minlength=6).float() / n

    plain = logits[0].softmax(-1)
    for t in (0.25, 2.0):
        want = plain.clone()
        want[~bg] = plain[~bg].sum() * (logits[0, ~bg] / t).softmax(-1)
        got = freq(ink_temperature=t)
        assert (got - want).abs().max() < 0.02, (t, got, want)
        assert abs(got[bg].sum() - plain[bg].sum()) < 0.02  # the background keeps its odds: digits keep their ink
    greedy = freq(ink_temperature=0.0)
    assert greedy[[1, 4, 5]].sum() == 0 and abs(greedy[3] - plain[~bg].sum()) < 0.02  # token 3: the likeliest digit code
    assert set(torch.nonzero(freq(ink_temperature=0.5, top_k=2)).flatten().tolist()) == {0, 2}
    with pytest.raises(ValueError, match="background"):
        sample_logits(logits, TokenSampling(ink_temperature=0.5))


def test_background_codes_are_the_codes_that_decode_dark():
    """background_codes decodes token grids and keeps the codes whose whole stride cell stays dark in >= 90% of
    their occurrences: code 0 (always dark), not code 1 (bright), not code 2 (dark next to a bright neighbour
    whose light spills into its cell), not code 3 (never seen)."""
    from types import SimpleNamespace

    from minisora.lit_gpt import background_codes

    def decode_codes(codes):  # (b, t, h, w) -> (b, 3, t, 2h, 2w): code 1 lights its cell and the one to its right
        lit = (codes == 1).float()
        lit = torch.maximum(lit, F.pad(lit, (1, 0))[..., :-1])
        return (lit * 2 - 1).repeat_interleave(2, -1).repeat_interleave(2, -2)[:, None].expand(-1, 3, -1, -1, -1)

    vae = SimpleNamespace(temporal_stride=1, spatial_stride=2, device="cpu", decode_codes=decode_codes)
    tokens = np.zeros((3, 2, 4, 4), dtype=np.int64)
    tokens[:, :, 1, 1], tokens[:, :, 1, 2] = 1, 2  # code 2 always sits right of a code 1
    assert background_codes(tokens, vae, 4) == [0]


def test_ink_temperature_flags_refuse_negative_values(capsys):
    """Both --ink_temperature flags (training default, sampling) stop at parse time on a negative value; 0 is the
    most likely digit code."""
    import argparse

    from minisora.cli import add_lm_args, add_sampling_args

    for add in (add_lm_args, add_sampling_args):
        p = argparse.ArgumentParser(allow_abbrev=False)
        add(p)
        assert p.parse_args(["--ink_temperature", "0"]).ink_temperature == 0.0
        with pytest.raises(SystemExit):
            p.parse_args(["--ink_temperature", "-0.5"])
        assert "must be >= 0, got -0.5" in capsys.readouterr().err


def test_ink_temperature_uses_the_checkpoints_background_codes():
    """A token model trained with background codes samples with ink_temperature (0: its digit cells take the
    most likely digit code); one without them (older checkpoints) says so instead of sampling."""
    from minisora.lit_gpt import LitLM

    cfg = GPTConfig(vocab_size=33, grid=(2, 2, 4), block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    with pytest.raises(ValueError, match="background codes"):
        LitLM("gpt", cfg.to_dict(), 32, [2, 2, 4], "none", ink_temperature=0.5).sample_codes(1)
    module = LitLM("gpt", cfg.to_dict(), 32, [2, 2, 4], "none", background_codes=list(range(16)))
    codes = module.sample_codes(64, opts=TokenSampling(ink_temperature=0.0)).flatten(1)
    seq = torch.cat([torch.full((64, 1), 32), codes], 1)
    logits = module.model(seq[:, :-1])[0][..., :32]
    likeliest_digit = logits[..., 16:].argmax(-1) + 16
    digit = codes >= 16
    assert 0.2 < digit.float().mean() < 0.8 and torch.equal(codes[digit], likeliest_digit[digit])


def test_num_frames_stops_the_same_draw_early():
    """sample_codes(num_frames=1) is the first latent frame of the whole draw with the same seed (what
    bench/bench_first_frame.py scores); a count outside 1..t is refused."""
    from minisora.lit_gpt import LitLM

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=33, grid=(2, 2, 4), block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    module = LitLM("gpt", cfg.to_dict(), 32, [2, 2, 4], "none")
    whole, first = module.sample_codes(5, seed=3), module.sample_codes(5, seed=3, num_frames=1)
    assert whole.shape == (5, 2, 2, 4) and first.shape == (5, 1, 2, 4) and torch.equal(first, whole[:, :1])
    assert not torch.equal(whole[:, :1], module.sample_codes(5, seed=4, num_frames=1))
    for bad in (0, 3):
        with pytest.raises(ValueError, match="num_frames must be in 1..2"):
            module.sample_codes(1, num_frames=bad)


@pytest.mark.parametrize("kind", ["gpt", "mamba"])
def test_motion_tokenizers_draw_codes_first_then_motion_tokens(kind):
    """models.motion.token_ranges(grid, F, V): the first latent frame (16 cells of a (2, 4, 4) grid) draws only
    codes < F, the later frames only motion tokens F..V-1, whatever a random model's logits prefer."""
    from models.motion import token_ranges
    ranges = token_ranges((2, 4, 4), 20, 32)
    logits = torch.zeros(2, 33)
    logits[:, 3] = 50.0  # the model's favourite lies outside the range
    for length, lo, hi in ((5, 0, 20), (16, 0, 20), (17, 20, 32)):  # sequence lengths: BOS + codes drawn so far
        kept = torch.isfinite(ranges(torch.zeros(2, length), logits)[0]).nonzero().flatten()
        assert kept.tolist() == list(range(lo, hi))
    m = tiny_gpt(block_size=40) if kind == "gpt" else MambaLM(MambaConfig(
        vocab_size=33, d_model=16, n_layer=2, grid=(2, 4, 4), block_size=40, use_kernels=False)).eval()
    out = m.generate(torch.full((4, 1), 32), 32, processors=(ranges,), generator=torch.Generator().manual_seed(0))[:, 1:]
    assert int(out[:, :16].max()) < 20 and int(out[:, 16:].min()) >= 20 and int(out.max()) < 32


def test_loss_falls_on_tiny_overfit():
    m = tiny_gpt().train()
    x = torch.randint(0, 32, (4, 12))
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    first = m(x[:, :-1], targets=x[:, 1:])[1].item()
    for _ in range(100):
        loss = m(x[:, :-1], targets=x[:, 1:])[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_mamba_scan_matches_naive_loop_and_recurrence():
    torch.manual_seed(0)
    b, d, l, n = 2, 6, 45, 4
    u, delta, A = torch.randn(b, d, l), torch.rand(b, d, l), -torch.rand(d, n) * 3
    B, C, D = torch.randn(b, n, l), torch.randn(b, n, l), torch.randn(d)
    y1, h1 = selective_scan_ref(u, delta, A, B, C, D)
    y2, h2 = selective_scan(u, delta, A, B, C, D, chunk=16)
    assert torch.allclose(y1, y2, atol=1e-4) and torch.allclose(h1, h2, atol=1e-5)
    m = MambaLM(MambaConfig(vocab_size=20, d_model=16, n_layer=2)).eval()
    x = torch.randint(0, 20, (2, 10))
    full, _ = m(x)
    states = [{} for _ in m.blocks]
    steps = torch.cat([m(x[:, i:i + 1], states=states)[0] for i in range(10)], 1)
    assert torch.allclose(full, steps, atol=1e-5)
    out = m.generate(x[:, :2], 6, TokenSampling(temperature=0.8, top_k=5), generator=torch.Generator().manual_seed(0),
                     processors=(below(19),))
    assert out.shape == (2, 8) and int(out[:, 2:].max()) < 19


TINY_LM = ["--batch_size", "4", "--gradient_accumulation_steps", "1", "--max_iters", "4", "--eval_interval", "2",
           "--eval_iters", "1", "--log_interval", "1", "--sample_interval", "4", "--num_workers", "0",
           "--warmup_iters", "1", "--lr_decay_iters", "4"]


@pytest.mark.parametrize("script,seed,tiny", [
    ("train_latent_nanogpt.py", "--block_size 512 --sample_interval 2000 --batch_size 8 --gradient_accumulation_steps 4 "
     "--max_iters 10000000 --wandb_log", ["--block_size", "64", "--n_layer", "1", "--n_head", "2", "--n_embd", "32"]),
    ("train_latent_mdgpt.py", "--block_size 512 --sparse_block_size 512 --sample_interval 1000 --num_latent_frames 8 "
     "--batch_size 8 --gradient_accumulation_steps 4 --use_1d_pos_emb --max_iters 100000000 --only_predict_last --wandb_log",
     ["--block_size", "64", "--sparse_block_size", "48", "--num_latent_frames", "1", "--n_layer", "1", "--n_head", "2",
      "--n_embd", "32"]),
    ("train_latent_mamba.py", "--n_layer 32 --n_embed 1280 --batch_size 8 --gradient_accumulation_steps 1 --block_size 512 --track",
     ["--n_layer", "1", "--n_embed", "32", "--block_size", "64"]),
])
def test_seed_commands_run_with_tiny_overrides(script, seed, tiny, tiny_stage_files, tmp_path):
    name = script.split("_")[-1].split(".")[0]
    out = run(script, seed.split() + ["--tokens_input_file", tiny_stage_files["tokens"]] + TINY_LM + tiny +
              ["--output_dir", tmp_path, "--run_name", name], tmp_path)
    d = tmp_path / script[:-3] / name
    ckpt = torch.load(d / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["minisora"]["n_codes"] == 300
    assert ckpt["minisora"]["grid"] == ([1, 8, 8] if name == "mdgpt" else [2, 8, 8])
    rows = list(csv.DictReader(open(d / "metrics.csv")))
    assert any(r.get("val/loss") for r in rows) and any(r.get("train/loss") for r in rows)
    assert list((d / "samples").glob("sample_*.mp4")) and "samples:" in out.stdout
    assert (d / "checkpoints/best.ckpt").exists()
    if name in ("nanogpt", "mamba"):  # the checkpoint alone samples videos
        smp = run("sample.py", ["--checkpoint", d / "checkpoints/last.ckpt", "--num_videos", 3, "--batch_size", 2,
                                "--top_k", 5, "--output_dir", tmp_path / "smp"], tmp_path)
        assert "top-k 5" in smp.stdout and (tmp_path / "smp/grid.gif").exists()
        assert sorted(f.name for f in (tmp_path / "smp").glob("0*.mp4")) == ["000.mp4", "001.mp4", "002.mp4"]
        assert read_video(tmp_path / "smp/000.mp4").shape == (8, 32, 32, 3)  # 2x8x8 codes through the s4t4 VQ-VAE
    if name == "nanogpt":  # resume continues from step 4
        more = TINY_LM[:TINY_LM.index("--max_iters")] + ["--max_iters", "6"] + TINY_LM[TINY_LM.index("--max_iters") + 2:]
        run(script, ["--tokens_input_file", tiny_stage_files["tokens"]] + more + tiny +
            ["--output_dir", tmp_path, "--run_name", "resumed", "--resume_from", d / "checkpoints/last.ckpt"], tmp_path)
        assert torch.load(tmp_path / script[:-3] / "resumed/checkpoints/last.ckpt", weights_only=True)["global_step"] == 6


def test_sparse_context_window_script(tiny_stage_files, tiny_data, tmp_path):
    args = ["--tokens_input_file", tiny_stage_files["tokens"], *TINY_LM, "--block_size", "64", "--n_layer", "1",
            "--n_head", "2", "--n_embd", "32", "--output_dir", tmp_path, "--run_name", "sparse",
            "--sparse_context_window", "--context_stride", "2", "--context_stride_start", "16"]
    run("train_latent_nanogpt.py", args, tmp_path)
    ckpt = torch.load(tmp_path / "train_latent_nanogpt/sparse/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["minisora"]["config"]["context_stride"] == 2 and ckpt["minisora"]["config"]["context_dense"] == 16
    smp = run("sample.py", ["--checkpoint", tmp_path / "train_latent_nanogpt/sparse/checkpoints/last.ckpt",
                            "--num_videos", 1, "--output_dir", tmp_path / "smp"], tmp_path)
    assert (tmp_path / "smp/000.mp4").exists() and "1 videos" in smp.stdout
    # bench/picture.py: samples | continuations, one video per column, the chosen frames top to bottom
    run("bench/picture.py", ["--checkpoint", tmp_path / "train_latent_nanogpt/sparse/checkpoints/last.ckpt", "--dataset",
                             "tiny", "--data_dir", tiny_data, "--resolution", 32, "--sequence_length", 8, "--num", 2,
                             "--given", 4, "--frames", 0, 7, "--output", tmp_path / "pic.png"], tmp_path)
    from PIL import Image
    pic = np.asarray(Image.open(tmp_path / "pic.png"))
    assert pic.shape == (2 * 32, 2 * 32 + 8 + 2 * 32, 3) and (pic[:, 64:72] == 255).all()
    bad = run("train_latent_nanogpt.py", args[:-4] + ["--context_stride_start", "64"], tmp_path, ok=False)
    assert bad.returncode != 0 and "context_dense" in bad.stderr and "Traceback" not in bad.stderr


def test_nanogpt_mamba_switch_runs_the_mamba_trainer(tiny_stage_files, tmp_path):
    """train_latent_nanogpt.py --mamba (upstream's switch) is train_latent_mamba.py: same code, same flags."""
    out = run("train_latent_nanogpt.py", ["--mamba", "--tokens_input_file", tiny_stage_files["tokens"], *TINY_LM, "--n_layer",
                                          "1", "--n_embd", "32", "--block_size", "64", "--output_dir", tmp_path,
                                          "--run_name", "m"], tmp_path)
    ckpt = torch.load(tmp_path / "train_latent_nanogpt/m/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["minisora"]["kind"] == "mamba" and ckpt["minisora"]["config"]["d_model"] == 32
    assert ckpt["minisora"]["config"]["d_state"] == 16  # train_latent_mamba.py's flags and defaults
    assert "samples:" in out.stdout
    bad = run("train_latent_nanogpt.py", ["--mamba", "--sparse_context_window", "--tokens_input_file",
                                          tiny_stage_files["tokens"]], tmp_path, ok=False)
    assert bad.returncode != 0 and "--sparse_context_window" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("kind", ["gpt", "mamba"])
def test_prompted_model_generates_the_prompted_sequence(kind):
    """A tiny class-conditional GPT / Mamba overfit on two videos, told apart only by their label sets: prompted
    with a label set it generates that set's video (greedy, with and without guidance)."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=33, grid=(1, 2, 4), block_size=8, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                      num_classes=10)) if kind == "gpt" else \
        MambaLM(MambaConfig(vocab_size=33, d_model=32, n_layer=2, grid=(1, 2, 4), block_size=8, num_classes=10,
                            use_kernels=False))
    seqs = torch.tensor([[32, 1, 2, 3, 4, 5, 6, 7, 8], [32, 8, 7, 6, 5, 4, 3, 2, 1]])
    y = torch.zeros(2, 10)
    y[0, 3] = y[1, [0, 7]] = 1
    overfit_labelled(m, seqs, y, 600)
    m.eval()
    for scale in (1.0, 3.0):
        out = m.generate(seqs[:, :1], 8, TokenSampling(temperature=0, cfg_scale=scale), y=y)
        assert torch.equal(out, seqs), (scale, out)
    swapped = m.generate(seqs[:, :1], 8, TokenSampling(temperature=0), y=y.flip(0))
    assert torch.equal(swapped, seqs.flip(0))  # the label, not the batch row, decides


def test_prior_labels_need_a_class_conditional_checkpoint_that_keeps_its_prior():
    """prior_label_sets draws from the checkpoint's label_prior, reproducibly; a checkpoint from before the prior
    was kept, or an unconditional one, gets an error that says what to do instead."""
    from minisora.generate import prior_label_sets
    from minisora.lit_gpt import LitLM
    cfg = GPTConfig(vocab_size=33, grid=(2, 2, 4), block_size=16, n_layer=1, n_head=2, n_embd=32, num_classes=10).to_dict()
    prior = {"sets": [[2], [4, 9]], "counts": [1, 3]}
    module = LitLM("gpt", cfg, 32, [2, 2, 4], "none", label_prior=prior)
    drawn = prior_label_sets(module, 8, seed=3)
    assert all(d in prior["sets"] for d in drawn) and drawn == prior_label_sets(module, 8, seed=3)
    with pytest.raises(ValueError, match="keeps no label prior.*--labels / --prompts"):
        prior_label_sets(LitLM("gpt", cfg, 32, [2, 2, 4], "none"), 2)
    with pytest.raises(ValueError, match="unconditional"):
        prior_label_sets(LitLM("gpt", {**cfg, "num_classes": 0}, 32, [2, 2, 4], "none", label_prior=prior), 2)


def test_class_conditional_gpt_script_and_prompted_sampling(tiny_stage_files, tiny_data, tmp_path):
    """--class_conditional trains on the tokens' source labels (--prev_frames: reading earlier frames through the
    whole sequence; with --first_frame_windows); its checkpoint carries its sampling flags as the defaults of
    sample.py / evaluate.py; sample.py --prompts/--cfg_scale/--prior_labels works for it;
    evaluate.py --continuation scores its continuations of real val videos beside the copy-last-frame baseline
    (--continuation_cfg: prompted with the digits read in the given frames)."""
    run("train_latent_nanogpt.py", ["--tokens_input_file", tiny_stage_files["tokens"], *TINY_LM, "--block_size", "64",
                                    "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--class_conditional",
                                    "--prev_frames", "1", "--first_frame_windows", "0.5", "--cfg_scale", "2.5",
                                    "--ink_temperature", "0.5", "--checkpoint_every", "2", "--output_dir", tmp_path,
                                    "--run_name", "c"], tmp_path)
    ck = tmp_path / "train_latent_nanogpt/c/checkpoints/last.ckpt"
    early = tmp_path / "train_latent_nanogpt/c/checkpoints/step0000002.ckpt"  # --checkpoint_every: kept besides best
    assert early.exists() and (tmp_path / "train_latent_nanogpt/c/checkpoints/step0000004.ckpt").exists()
    state = torch.load(ck, weights_only=True)
    assert state["minisora"]["config"]["num_classes"] == 10 and state["minisora"]["config"]["prev_frames"] == 1
    hp = state["hyper_parameters"]
    assert hp["cfg_scale"] == 2.5 and hp["ink_temperature"] == 0.5  # the sampling defaults it carries
    assert isinstance(hp["background_codes"], list) and all(0 <= c < hp["n_codes"] for c in hp["background_codes"])
    from minisora.generate import load_generator
    loaded = load_generator(str(ck)).hparams  # what sample.py / evaluate.py sample with by default
    assert loaded.cfg_scale == 2.5 and loaded.ink_temperature == 0.5
    assert loaded.background_codes == hp["background_codes"] and loaded.top_k == hp["top_k"]
    out = run("sample.py", ["--checkpoint", ck, "--num_videos", 2, "--prompts", "3,7", "1",
                            "--output_dir", tmp_path / "smp"], tmp_path)
    assert (tmp_path / "smp/grid.gif").exists() and "2 videos" in out.stdout
    assert f"top-k {hp['top_k']}, top-p None, guidance 2.5, digit codes at temperature 0.5" in out.stdout  # the recipe's
    from minisora.data import label_prior, stage_labels
    from minisora.stagefile import load_stage
    prior = state["minisora"]["label_prior"]  # the training rows' digit sets, kept for --prior_labels
    assert prior == label_prior(stage_labels(load_stage(tiny_stage_files["tokens"])[1])) and sum(prior["counts"]) > 0
    out = run("sample.py", ["--checkpoint", ck, "--num_videos", 3, "--prior_labels", "--cfg_scale", 2,
                            "--output_dir", tmp_path / "prior"], tmp_path)
    assert "guidance 2.0" in out.stdout  # a flag overrides the recipe
    drawn = out.stdout.split("digits drawn from the training data's: ")[1].split(")")[0].split()
    assert len(drawn) == 3 and all([int(d) for d in s.split(",")] in prior["sets"] for s in drawn), out.stdout
    assert (tmp_path / "prior/grid.gif").exists()
    pic = run("bench/picture.py", ["--checkpoint", ck, "--dataset", "tiny", "--data_dir", tiny_data, "--resolution", 32,
                                   "--sequence_length", 8, "--num", 2, "--frames", 0, "--prior_labels", "--output",
                                   tmp_path / "pic.png"], tmp_path)
    shown = pic.stdout.split("the samples' digits, left to right: ")[1].split("\n")[0].split()
    assert shown == drawn[:2] and (tmp_path / "pic.png").exists()  # the same seed draws the same digits
    both = run("sample.py", ["--checkpoint", ck, "--prior_labels", "--labels", 3], tmp_path, ok=False)
    assert both.returncode != 0 and "drop --labels/--prompts" in both.stderr
    ev = run("evaluate.py", ["--dataset", "tiny", "--data_dir", tiny_data, "--checkpoint", ck, "--continuation", 4,
                             "--continuation_cfg", 2,
                             "--resolution", 32, "--sequence_length", 8, "--num_videos", 0,
                             "--num_fmd", 4, "--feature_steps", 5, "--cache_dir", tmp_path / "ev",
                             "--output", tmp_path / "ev.json"], tmp_path)
    assert "continuations prompted with the digits read in their given frames" in ev.stdout
    cont = json.loads((tmp_path / "ev.json").read_text())["continuation"]
    assert set(cont) == {"model", "copy last given frame", "real"} and len(cont["model"]["psnr_per_frame"]) == 4
    assert cont["real"]["SSIM"] > 0.999 and cont["copy last given frame"]["mean_speed_px"] < cont["real"]["mean_speed_px"]


def test_motion_tokens_through_tokenize_gpt_sample_and_continuation(tiny_data, tmp_path):
    """tokenize_videos.py --motion_tokens on a per-frame tokenizer writes codes then motion tokens (vocabulary and
    derived tokenizer recorded); the GPT trains on them, sample.py draws codes first and motion after (decoded by
    the tokenizer the sidecar names) and evaluate.py scores continuations (the given frames re-coded alone)."""
    from minisora.stagefile import load_stage
    runs = tmp_path / "runs"
    run("train_vqvae.py", ["--dataset", "tiny", "--data_dir", tiny_data, "--output_dir", runs, "--resolution", 32,
                           "--sequence_length", 8, "--epochs", 1, "--limit_train_batches", 2, "--limit_val_batches", 0,
                           "--channels", 8, 8, 8, "--n_codes", 64, "--num_workers", 0, "--log_videos_every", 0,
                           "--network_variant", "s4t1_m_vq", "--run_name", "pf"], tmp_path)
    tok = tmp_path / "mv.npy"
    common = ["--dataset", "tiny", "--data_dir", tiny_data, "--resolution", 32, "--sequence_length", 8,
              "--num_workers", 0, "--batch_size", 4]
    out = run("tokenize_videos.py", [*common, "--vae", runs / "train_vqvae/pf/checkpoints/last.ckpt",
                                     "--motion_tokens", 2, "--output", tok, "--decode", 1], tmp_path)
    assert "motion tokens after the first frame (radius 2: 89 tokens)" in out.stdout and "PSNR" in out.stdout
    arr, meta = load_stage(tok, expect_kind="tokens")
    assert arr.shape == (12, 8, 8, 8) and meta["n_codes"] == 64 + 25 and meta["motion_radius"] == 2
    assert int(arr[:, 0].max()) < 64 and int(arr[:, 1:].min()) >= 64 and int(arr.max()) < 89
    assert meta["vae"]["reference"] == str(tok.with_suffix(".vae.ckpt"))
    out = run("train_latent_nanogpt.py", ["--tokens_input_file", tok, *TINY_LM, "--block_size", "64", "--n_layer", "1",
                                          "--n_head", "2", "--n_embd", "32", "--class_conditional", "--prev_frames", "1",
                                          "--read_ink", "--output_dir", tmp_path, "--run_name", "m"], tmp_path)
    assert "ink maps of 12 clips" in out.stdout
    ck = tmp_path / "train_latent_nanogpt/m/checkpoints/last.ckpt"
    from minisora.generate import load_generator
    codes = load_generator(str(ck)).sample_codes(2, seed=1)
    assert codes.shape == (2, 8, 8, 8) and int(codes[:, 0].max()) < 64 and int(codes[:, 1:].min()) >= 64
    run("sample.py", ["--checkpoint", ck, "--num_videos", 2, "--output_dir", tmp_path / "smp"], tmp_path)
    assert (tmp_path / "smp/grid.gif").exists()
    run("evaluate.py", ["--dataset", "tiny", "--data_dir", tiny_data, "--checkpoint", ck, "--continuation", 2,
                        "--resolution", 32, "--sequence_length", 8, "--num_videos", 2, "--num_fmd", 2,
                        "--feature_steps", 5, "--cache_dir", tmp_path / "ev", "--output", tmp_path / "ev.json"], tmp_path)
    cont = json.loads((tmp_path / "ev.json").read_text())["continuation"]
    assert len(cont["model"]["psnr_per_frame"]) == 6
