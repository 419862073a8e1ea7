"""Tiny CPU tests for models/vqvae.py and models/layers.py."""
import json
import sys
from pathlib import Path

import pytest
import torch
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.layers import Downsample3d, ResBlock3d, Upsample3d, modulate, timestep_embedding  # noqa: E402
from models.vqvae import PRESETS, VAEConfig, VectorQuantizer, VideoVAE, _unfold_time, make_config  # noqa: E402
import models.vqvae as models_vqvae  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def tiny(variant, **kw):
    n = len(PRESETS[variant]["channels"])
    return make_config(variant, **{"channels": (8,) * n, "n_codes": 64, **kw})


def clip(b=1, t=4, h=16, w=16, seed=0):
    """A bright square moving over a dark background, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.ones(b, 3, t, h, w)
    for i in range(b):
        y0, x0 = torch.randint(0, h // 2, (2,), generator=g).tolist()
        for f in range(t):
            x[i, :, f, y0:y0 + h // 4, x0 + f:x0 + f + w // 4] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return x


# ---------------------------------------------------------------- layers
def test_layers_shapes():
    x = torch.randn(2, 8, 4, 8, 8)
    assert ResBlock3d(8, 16)(x).shape == (2, 16, 4, 8, 8)
    assert Downsample3d(8, 8, (2, 2, 2))(x).shape == (2, 8, 2, 4, 4)
    assert Downsample3d(8, 8, (1, 2, 2))(x).shape == (2, 8, 4, 4, 4)
    assert Upsample3d(8, 4, (2, 2, 2))(x).shape == (2, 4, 8, 16, 16)
    e = timestep_embedding(torch.tensor([0.0, 5.0]), 9)
    assert e.shape == (2, 9) and torch.allclose(e[0, :4], torch.ones(4)) and e[:, -1].eq(0).all()
    h = torch.randn(2, 5, 6)
    assert torch.allclose(modulate(h, torch.zeros(2, 6), torch.zeros(2, 6)), h)


@torch.no_grad()
def test_resampling_is_causal_by_construction():
    """Downsample3d / Upsample3d take no `causal` flag: in time they only regroup frames. Output frame k of a
    t-stride-2 Downsample3d is made from input frames 2k and 2k + 1 alone; Upsample3d's output frames 2k and
    2k + 1 from input frame k alone. With (1, 2, 2) every output frame sees its own input frame only."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 4, 4)
    for stride, t_out in (((2, 2, 2), 2), ((1, 2, 2), 1)):
        down, up = Downsample3d(4, 4, stride), Upsample3d(4, 4, stride)
        for f in range(6):
            x2 = x.clone()
            x2[:, :, f] += 1.0  # change input frame f only
            moved = (down(x2) - down(x)).abs().amax((0, 1, 3, 4)) > 1e-5
            assert moved.tolist() == [k == f // t_out for k in range(6 // t_out)], (stride, f)
            moved = (up(x2) - up(x)).abs().amax((0, 1, 3, 4)) > 1e-5
            assert moved.tolist() == [j // t_out == f for j in range(6 * t_out)], (stride, f)


# ---------------------------------------------------------------- presets / config
@pytest.mark.parametrize("variant", list(PRESETS))
def test_preset_latent_shape(variant):
    cfg = tiny(variant)
    m = VideoVAE(cfg).eval()
    T, H = max(8, cfg.temporal_stride), max(32, cfg.spatial_stride)
    x = torch.rand(1, 3, T, H, H) * 2 - 1
    with torch.no_grad():
        enc = m.encode(x)
        out = m(x)
    shape = (1, cfg.embedding_dim, T // cfg.temporal_stride, H // cfg.spatial_stride, H // cfg.spatial_stride)
    assert enc["z"].shape == shape and m.latent_shape(T, H, H) == shape[1:]
    assert out["recon"].shape == x.shape and torch.isfinite(out["loss"])
    assert ("codes" in enc) == cfg.quantize and ("logvar" in enc) == cfg.kl
    if cfg.quantize:
        assert enc["codes"].shape == (1,) + shape[2:] and out["counts"].sum() == enc["codes"].numel()


def test_preset_flags_and_errors():
    assert make_config("s8_b").quantize and make_config("s8_b").spatial_stride == 4
    assert make_config("s8_b").temporal_stride == 4
    assert make_config("vae_s4t4_b_vq").kl and make_config("vae_s4t4_b_vq").quantize
    assert make_config("s16t16_a").temporal_stride == 16
    with pytest.raises(ValueError, match="s4t4_b"):
        make_config("nope")
    with pytest.raises(ValueError):
        VAEConfig(spatial_stride=3)
    with pytest.raises(ValueError):
        VAEConfig(spatial_stride=8, channels=(8, 8))
    m = VideoVAE(tiny("s4t4"))
    with pytest.raises(ValueError, match="temporal stride 4"):
        m.encode(torch.zeros(1, 3, 6, 16, 16))


def test_config_json_round_trip():
    cfg = make_config("vae_s4t4_b_vq", n_codes=5120, channels=[16, 32, 64])
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["channels"] == [16, 32, 64]
    assert VAEConfig.from_dict(d) == cfg and isinstance(VAEConfig.from_dict(d).channels, tuple)


# ---------------------------------------------------------------- vector quantizer
def test_vq_codes_grads_round_trip():
    torch.manual_seed(0)
    m = VideoVAE(tiny("s4t4_b_vq", n_codes=16)).train()
    x = clip(2, 4, 16, 16)
    out = m(x)
    codes, K = out["codes"], m.config.n_codes
    assert codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() < K
    vq = m.quantizer.eval()(out["z"].detach())  # eval: no EMA step between lookup and comparison
    assert torch.allclose(vq["quantized"], m.quantizer.codes_to_vectors(vq["codes"]), atol=1e-6)
    rows = vq["quantized"].permute(0, 2, 3, 4, 1).reshape(-1, 4)
    err = (rows[:, None] - m.quantizer.codebook[None]).abs().amax(-1).min(1).values
    assert err.max() < 1e-6  # every quantized vector is a codebook row
    out["loss"].backward()
    g = m.encoder.conv_in.weight.grad
    assert g is not None and g.abs().sum() > 0  # straight-through reaches the encoder
    q = m.quantizer
    assert torch.equal(q.vectors_to_codes(q.codes_to_vectors(codes)), codes)
    assert 1 <= out["perplexity"] <= K


def test_vq_nearest_matches_cdist_and_chunks():
    q = VectorQuantizer(37, 5, chunk_elems=37 * 7)  # 7 rows per chunk
    z = torch.randn(100, 5)
    idx, per_code = q.nearest(z, per_code=True)
    d = torch.cdist(z, q.codebook)
    assert torch.equal(idx, d.argmin(1)) and torch.equal(per_code, d.argmin(0))


def test_ema_moves_codes_toward_data():
    torch.manual_seed(0)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    q = VectorQuantizer(4, 2, ema_decay=0.8).train()
    q.initialized.fill_(True)  # skip data init: start from a known, wrong codebook
    q.codebook.copy_(centers * 0.2)
    q.embed_sum.copy_(q.codebook)
    data = (centers.repeat(64, 1) + 0.1 * torch.randn(256, 2))
    z = data.T.reshape(1, 2, 1, 16, 16)
    before = torch.cdist(q.codebook, centers).diagonal().clone()
    for _ in range(20):
        q(z)
    after = torch.cdist(q.codebook, centers).diagonal()
    assert (after < 0.5 * before).all() and (after < 0.3).all()


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_data_init_and_low_utilization_pull(lam):
    torch.manual_seed(0)
    q = VectorQuantizer(8, 2, low_utilization_cost=lam, ema_decay=0.9).train()
    z = torch.randn(1, 2, 1, 8, 8) + 5.0
    q(z)
    assert bool(q.initialized) and (q.codebook.mean(0) - 5.0).abs().max() < 1.0  # codes come from data
    dead = torch.tensor([-50.0, -50.0])  # move code 0 far from the data: it will never be chosen
    q.codebook[0], q.embed_sum[0], q.cluster_size[0] = dead, dead, 1.0
    for _ in range(80):
        q(z)
    dist = (z.flatten(2)[0].T - q.codebook[0]).norm(dim=1).min()  # to the nearest encoder output
    if lam:
        assert dist < 1.0  # pulled to the data (where it may now win a few points of its own)
    else:
        assert dist > 10.0  # plain EMA leaves it dead


def test_reinit_dead_codes():
    torch.manual_seed(0)
    q = VectorQuantizer(10, 3)
    q.codebook.copy_(torch.randn(10, 3))
    old = q.codebook.clone()
    usage = torch.tensor([5, 0, 3, 0, 0, 1, 0, 2, 0, 0.0])
    z = torch.randn(4, 3).repeat(5, 1)  # only 4 distinct vectors for 6 dead codes
    n = q.reinit_dead_codes(z, usage)
    dead = usage == 0
    assert n == 6 and torch.equal(q.codebook[~dead], old[~dead]) and (q.codebook[dead] != old[dead]).all()
    d = torch.cdist(q.codebook, q.codebook) + torch.eye(10) * 1e9
    assert d.min() > 1e-6  # all codes distinct (no argmin ties)
    assert torch.cdist(q.codebook[dead], z).min(1).values.max() < 0.2  # close to encoder outputs


def test_merge_near_duplicates_gives_one_code_per_content_and_loads_old_checkpoints():
    torch.manual_seed(0)
    q = VectorQuantizer(6, 2).eval()
    base = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    q.codebook.copy_(torch.cat([base, base + 0.05]))  # codes 3-5: near-copies of 0-2
    q.cluster_size.copy_(torch.tensor([1.0, 9, 1, 9, 1, 9]))
    z = torch.cat([base + 0.03, base + 0.02])  # each content once just past the midpoint, once just before it
    assert q.nearest(z).tolist() == [3, 4, 5, 0, 1, 2]  # a duplicate pair splits one content over two codes
    assert q.merge_near_duplicates(0.2) == 3
    assert q.active.tolist() == [False, True, False, True, False, True]  # the more used of each pair stays
    assert q.nearest(z).tolist() == [3, 1, 5, 3, 1, 5]
    n = q.reinit_dead_codes(torch.randn(20, 2), torch.tensor([0, 1, 1, 1, 1, 1.0]))
    assert n == 1 and q.active[0]  # a re-seeded code is a new code, active again
    old = {k: v for k, v in VectorQuantizer(6, 2).state_dict().items() if k != "active"}
    fresh = VectorQuantizer(6, 2)
    fresh.load_state_dict(old)  # checkpoints from before `active` load (strict), every code active
    assert fresh.active.all()


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_replicate_temporal_padding_encodes_a_still_clip_the_same_at_its_edges(padding):
    torch.manual_seed(0)
    m = VideoVAE(make_config("s4t1_m_vq", channels=(8, 16, 16), n_codes=32, temporal_padding=padding)).eval()
    x = clip(1, 8, 16, 16)[:, :, :1].expand(-1, -1, 8, -1, -1)  # one frame held for 8 frames
    with torch.no_grad():
        z = m.encoder(x)
        y = m.decoder(z)
    z_gap, y_gap = (z - z[:, :, 4:5]).abs().amax().item(), (y - y[:, :, 4:5]).abs().amax().item()
    if padding == "replicate":
        assert z_gap < 1e-5 and y_gap < 1e-5  # every latent frame (and decoded frame) alike, edges included
    else:
        assert z_gap > 1e-3  # zero padding makes the edge frames differ from the inside
    with pytest.raises(ValueError, match="temporal_padding"):
        make_config("s4t1_m_vq", temporal_padding="reflect")


# ---------------------------------------------------------------- whole models
@pytest.mark.parametrize("variant", ["s4t4_b_vq", "vae_s4t4_b"])
def test_overfit_one_clip(variant):
    torch.manual_seed(0)
    m = VideoVAE(make_config(variant, channels=(8, 16, 16), n_codes=32, embedding_dim=4)).train()
    x = clip(1, 4, 16, 16)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = m(x)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_kl_encode_and_loss():
    torch.manual_seed(0)
    m = VideoVAE(tiny("vae_s4t4_b")).eval()
    x = clip(1, 4, 16, 16)
    enc = m.encode(x)
    assert torch.equal(enc["z"], enc["mean"]) and enc["logvar"].shape == enc["mean"].shape
    out = m(x)
    assert out["kl_loss"] > 0 and out["vq_loss"] == 0 and out["counts"] is None
    assert torch.allclose(m(x, sample_posterior=False)["recon"], m.decode(enc["z"]))


def test_decode_codes_matches_forward_in_eval():
    torch.manual_seed(0)
    m = VideoVAE(tiny("s4t4_b_vq")).train()
    x = clip(1, 4, 16, 16)
    m(x)  # data-dependent init
    m.eval()
    out, enc = m(x), m.encode(x)
    assert torch.equal(out["codes"], enc["codes"])
    assert torch.allclose(out["recon"], m.decode_codes(enc["codes"]), atol=1e-5)
    assert torch.allclose(m.decode(enc["quantized"]), out["recon"], atol=1e-5)


def _first_changed(a, b, atol=1e-6):
    """Index of the first time step (axis 2) where a and b differ by more than atol (len if none)."""
    diff = (a - b).abs().amax((0, 1, 3, 4)) > atol
    return int(diff.int().argmax()) if diff.any() else len(diff)


@torch.no_grad()
def test_causal_model_ignores_future_frames():
    """causal_s8t4 (temporal stride 4): changing input frames >= 4 (k + 1) leaves latent frames 0..k (and their
    codes) as they were and changes latent frame k + 1; in the decoder, changing latent frames >= k + 1 leaves
    output frames < 4 (k + 1) as they were and changes frame 4 (k + 1). The non-causal s4t4 leaks (control)."""
    torch.manual_seed(0)
    m = VideoVAE(tiny("causal_s8t4")).eval()
    ts = m.config.temporal_stride
    assert m.config.causal and ts == 4
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 16, 16, 16, generator=g) * 2 - 1
    enc = m.encode(x)
    z = enc["z"]
    assert z.shape[2] == 4
    for k in range(3):
        x2 = x.clone()
        x2[:, :, ts * (k + 1):] = torch.rand(x2[:, :, ts * (k + 1):].shape, generator=g) * 2 - 1
        enc2 = m.encode(x2)
        assert _first_changed(z, enc2["z"]) == k + 1, k  # latent frames <= k unchanged, k + 1 changed
        assert torch.equal(enc["codes"][:, :k + 1], enc2["codes"][:, :k + 1])
        z2 = z.clone()
        z2[:, :, k + 1:] = torch.randn(z2[:, :, k + 1:].shape, generator=g)
        assert _first_changed(m.decode(z), m.decode(z2)) == ts * (k + 1), k  # frames < 4 (k + 1) unchanged
    # the same probe on a non-causal model sees the future: latent frame 0 moves with input frames >= 4
    nc = VideoVAE(tiny("s4t4")).eval()
    x2 = x.clone()
    x2[:, :, ts:] = -x2[:, :, ts:]
    assert _first_changed(nc.encode(x)["z"], nc.encode(x2)["z"]) == 0
    # configs saved with causal (before and after Down/Upsample3d lost their ignored flag) still load
    d = json.loads(json.dumps(m.config.to_dict()))
    again = VideoVAE(VAEConfig.from_dict(d)).eval()
    again.load_state_dict(m.state_dict())
    assert torch.equal(again.encode(x)["z"], z)


# ---------------------------------------------------------------- colour
def coloured_clips(b, g):
    """A 5x6 'digit' moving over black, in one colour per clip drawn as Flying MNIST draws them (21 levels per
    channel in [4/24, 1]): the grey direction then carries ~16x the variance of each chroma direction."""
    x = -torch.ones(b, 3, 4, 16, 16)
    cols = torch.randint(4, 25, (b, 3), generator=g).float() / 24 * 2 - 1
    for i in range(b):
        y0, x0 = torch.randint(0, 10, (2,), generator=g).tolist()
        for f in range(4):
            x[i, :, f, y0:y0 + 5, x0 + f // 2:x0 + f // 2 + 3] = cols[i].view(3, 1, 1)
            x[i, :, f, y0 + 2:y0 + 5, x0 + f // 2:x0 + f // 2 + 6] = cols[i].view(3, 1, 1)
    return x


def test_vae_learns_digit_colours():
    """A small KL-VAE trained briefly on single-coloured clips gives each clip's colour back: the mean RGB of its
    reconstruction over the object's pixels is within 35/255 of the source (an untrained or grey one is ~100 off)."""
    torch.manual_seed(0)
    cfg = make_config("vae_s4t4_m", channels=(16, 16), res_blocks=(1, 1), temporal_stride=2, spatial_stride=2,
                      kl_weight=1e-6, chroma_weight=4.0)
    m = VideoVAE(cfg)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    x_test = coloured_clips(32, torch.Generator().manual_seed(99))
    fg = x_test.max(1).values > -0.5

    def colour_error():
        with torch.no_grad():
            r = m.eval()(x_test, sample_posterior=False)["recon"]
        m.train()
        return sum((r[i][:, fg[i]].mean(1) - x_test[i][:, fg[i]].mean(1)).norm() * 127.5 for i in range(32)) / 32

    assert colour_error() > 60
    for _ in range(400):
        loss = m(coloured_clips(8, g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert colour_error() < 35


def test_chroma_loss_term():
    x = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    grey = x.mean(1, keepdim=True).expand_as(x)
    cfg = tiny("vae_s4t4_b", kl=False, chroma_weight=1.0)
    assert torch.allclose(models_vqvae.chroma(grey), torch.zeros_like(x), atol=1e-6)
    m = VideoVAE(cfg)
    base = VideoVAE(tiny("vae_s4t4_b", kl=False))
    base.load_state_dict(m.state_dict())
    out, ref = m(x), base(x)
    extra = F.mse_loss(models_vqvae.chroma(out["recon"]), models_vqvae.chroma(x))
    assert torch.allclose(out["loss"], ref["loss"] + extra, atol=1e-5)


def test_group_norm_keeps_several_channels_per_group():
    from models.layers import Normalize
    assert Normalize(32).num_groups == 8 and Normalize(16).num_groups == 4 and Normalize(128).num_groups == 32
    assert Normalize(32, group_channels=0).num_groups == 32  # the old layout (old checkpoints)
    assert VAEConfig.from_dict({k: v for k, v in VAEConfig().to_dict().items() if k != "group_channels"}).group_channels == 0


def test_fsq_codes_round_trip_reach_every_level_and_pass_gradients():
    """FSQ: vectors -> codes -> vectors is the quantized value; a sweep of the latent reaches every one of the
    prod(levels) codes (even and odd level counts); the straight-through gradient is not zero; a VAE with it
    trains and decodes its codes exactly like its quantized vectors."""
    from models.vqvae import FiniteScalarQuantizer
    q = FiniteScalarQuantizer((3, 4, 5))
    z = torch.randn(2, 3, 4, 5, 6) * 3
    out = q(z)
    assert torch.equal(q.codes_to_vectors(out["codes"]), out["quantized"])
    assert torch.equal(q.vectors_to_codes(z), out["codes"])
    assert out["quantized"].abs().max() <= 1 and float(out["loss"]) > 0 and float(q(z.clamp(-3, 3))["loss"]) == 0
    g = torch.linspace(-6, 6, 61)
    sweep = torch.stack(torch.meshgrid(g, g, g, indexing="ij")).reshape(3, -1)[None, :, None, None, :]
    assert torch.equal(torch.unique(q.vectors_to_codes(sweep)), torch.arange(60))  # all 3 * 4 * 5 codes
    assert torch.equal(q.codebook, q.codes_to_vectors(torch.arange(60).view(1, 1, 1, -1))[0, :, 0, 0].t())
    assert q.codebook.unique(dim=0).shape == (60, 3)  # every code a distinct vector
    z.requires_grad_(True)
    (q(z)["quantized"] * torch.randn(2, 3, 4, 5, 6)).sum().backward()
    assert z.grad.abs().mean() > 0.01
    cfg = make_config("s4t4_b_vq", quantizer="fsq", fsq_levels=(8, 5, 5, 5), embedding_dim=4, channels=(8, 8, 8))
    assert cfg.n_codes == 1000 and VAEConfig.from_dict(cfg.to_dict()) == cfg
    m = VideoVAE(cfg)
    x = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    o = m(x)
    o["loss"].backward()
    assert m.encoder.conv_in.weight.grad.abs().sum() > 0  # gradients reach the encoder through the rounding
    e = m.encode(x)
    assert int(e["codes"].max()) < 1000 and torch.equal(m.decode_codes(e["codes"]), m.decode(e["quantized"]))
    with pytest.raises(ValueError, match="embedding_dim"):
        make_config("s4t4_b_vq", quantizer="fsq", fsq_levels=(8, 5, 5), embedding_dim=4)


def test_warm_start_vq_tokenizer_from_kl_vae():
    """A KL-VAE's encoder/decoder start a VQ model: its pre-quantization latent is the KL posterior mean and
    the decoder is the same function; the codebook is left alone; a model of other widths is refused."""
    torch.manual_seed(0)
    kl = VideoVAE(tiny("vae_s4t4_b")).eval()
    vq = VideoVAE(tiny("s4t4_b_vq")).eval()
    codebook = vq.quantizer.codebook.clone()
    x = clip(1, 4, 16, 16)
    assert not torch.allclose(vq.encode(x)["z"], kl.encode(x)["mean"])
    vq.load_autoencoder(kl.state_dict())
    z = vq.encode(x)["z"]
    assert torch.allclose(z, kl.encode(x)["mean"], atol=1e-6)
    assert torch.allclose(vq.decode(z), kl.decode(z), atol=1e-6)
    assert torch.equal(vq.quantizer.codebook, codebook)
    narrow = VideoVAE(make_config("s4t4_b_vq", channels=(4, 4, 4), n_codes=64))
    before = {k: v.clone() for k, v in narrow.state_dict().items()}
    with pytest.raises(ValueError, match="encoder/decoder tensors do not match"):
        narrow.load_autoencoder(kl.state_dict())
    assert all(torch.equal(v, before[k]) for k, v in narrow.state_dict().items())  # nothing half-copied


def test_warm_start_per_frame_tokenizer_from_temporally_strided_vae():
    """An s4t4 VAE starts an s4t1 tokenizer (one latent frame per frame): its space-to-depth layers lose their
    frame pairs -- inputs summed, outputs averaged -- so on a still clip they compute what the source computes."""
    torch.manual_seed(0)
    down4, down1 = Downsample3d(3, 5, (2, 2, 2)), Downsample3d(3, 5, (1, 2, 2))
    up4, up1 = Upsample3d(5, 3, (2, 2, 2)), Upsample3d(5, 3, (1, 2, 2))
    with torch.no_grad():
        for small, big in ((down1, down4), (up1, up4)):
            for name, p in small.conv.named_parameters():
                axis = 1 if small is down1 and name == "weight" else 0
                p.copy_(_unfold_time(getattr(big.conv, name), p.shape, axis, small.stride))
        still = torch.randn(2, 3, 1, 8, 8).repeat(1, 1, 4, 1, 1)
        a, b = down4(still), down1(still)  # (2, 5, 2, 4, 4) and (2, 5, 4, 4, 4)
        assert torch.allclose(a[:, :, 0], b[:, :, 0], atol=1e-5) and torch.allclose(b[:, :, 0], b[:, :, 3], atol=1e-6)
        z = torch.randn(2, 5, 1, 4, 4)
        y4, y1 = up4(z), up1(z)  # 2 frames from the strided layer, 1 from the per-frame layer
        assert torch.allclose(y1[:, :, 0], y4.mean(2), atol=1e-5)
    src = VideoVAE(make_config("vae_s4t4_m", channels=(8, 16, 16), embedding_dim=4))
    dst = VideoVAE(make_config("s4t1_m_vq", channels=(8, 16, 16), embedding_dim=4, n_codes=32))
    dst.load_autoencoder(src.state_dict())
    assert dst.latent_shape(16, 32, 32) == (4, 16, 8, 8)
    still = clip(1, 1, 32, 32).repeat(1, 1, 16, 1, 1)
    with torch.no_grad():  # the stems agree on a still clip (padding aside, at an inner frame)
        s4 = src.encoder.conv_in(rearrange(still, "b c (t t2) (h h2) (w w2) -> b (c t2 h2 w2) t h w", t2=2, h2=2, w2=2))
        s1 = dst.encoder.conv_in(rearrange(still, "b c t (h h2) (w w2) -> b (c h2 w2) t h w", h2=2, w2=2))
    assert torch.allclose(s4[:, :, 3], s1[:, :, 6], atol=1e-5)
    assert dst.decode(dst.encode(still)["z"]).shape == still.shape


def _moving_square(T=6, size=32, v=(2, -3), start=(8, 18)):
    """(1, 3, T, size, size) in [-1, 1]: a textured 6x5 block (a stroke has no flat interior that any small
    move matches) moving by v px per frame on black."""
    x = -torch.ones(1, 3, T, size, size)
    block = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.2
    for t in range(T):
        y0, x0 = start[0] + v[0] * t, start[1] + v[1] * t
        x[0, :, t, y0:y0 + 6, x0:x0 + 5] = block
    return x


def test_block_motion_recovers_a_moving_block_exactly():
    from models.motion import match_cells, motion_offsets, warp_cells
    x, R, cell = _moving_square(), 3, 4
    offsets = motion_offsets(R)
    assert offsets.shape == (49, 2) and offsets[49 // 2].tolist() == [0, 0]
    prev = x[:, :, 0]
    for t in range(1, x.shape[2]):
        v, prev = match_cells(prev, x[:, :, t], cell, R)
        assert torch.equal(prev, x[:, :, t])  # the warped previous frame is the next frame, exactly
        assert torch.equal(warp_cells(x[:, :, t - 1], v, cell, R), x[:, :, t])
        ink = F.max_pool2d(x[:, :, t].amax(1, keepdim=True), cell)[:, 0] > -0.6
        assert (offsets[v[ink]] == torch.tensor([2, -3])).all()  # the block's cells carry its velocity
        far = F.max_pool2d((ink | (F.max_pool2d(x[:, :, t - 1].amax(1, keepdim=True), cell)[:, 0] > -0.6)).float(),
                           3, 1, 1)[0] == 0
        assert (v[0][far] == 49 // 2).all() and far.sum() > 20  # empty cells away from it keep (0, 0)


def test_warp_cells_equals_moving_each_block_by_hand():
    """warp_cells (one gather) against a per-cell loop: cell (i, j) of the output is the cell-sized block of prev
    displaced by its vector, black where the source falls off the frame."""
    from models.motion import motion_offsets, warp_cells
    torch.manual_seed(0)
    cell, R = 2, 2
    prev = torch.rand(2, 3, 8, 6) * 2 - 1
    offsets = motion_offsets(R)
    vectors = torch.randint(0, len(offsets), (2, 4, 3))
    ref = torch.full_like(prev, -1.0)
    for b in range(2):
        for i in range(4):
            for j in range(3):
                dy, dx = offsets[vectors[b, i, j]].tolist()
                for y in range(i * cell, (i + 1) * cell):
                    for x in range(j * cell, (j + 1) * cell):
                        if 0 <= y - dy < 8 and 0 <= x - dx < 6:
                            ref[b, :, y, x] = prev[b, :, y - dy, x - dx]
    assert torch.equal(warp_cells(prev, vectors, cell, R), ref)


def test_motion_tokens_encode_decode_and_config():
    from models.vqvae import VAEConfig
    cfg = make_config("s4t1_m_vq", channels=(8, 8, 8), n_codes=64, motion_radius=3)
    assert cfg.n_tokens == 64 + 49 and VAEConfig.from_dict(cfg.to_dict()).motion_radius == 3
    assert VAEConfig.from_dict({**cfg.to_dict(), "motion_blank": False}).motion_radius == 3  # older checkpoints load
    with pytest.raises(ValueError, match="removed after commit 92eadaa"):  # the blank token was an experiment
        VAEConfig.from_dict({**cfg.to_dict(), "motion_blank": True})
    with pytest.raises(ValueError, match="per-frame quantizing"):
        make_config("s4t4_m_vq", motion_radius=3)
    model = VideoVAE(cfg).eval()
    x = _moving_square()
    with torch.no_grad():
        tok = model.encode_tokens(x)
        assert tok.shape == (1, 6, 8, 8) and int(tok[:, 0].max()) < 64 and int(tok[:, 1:].min()) >= 64
        assert torch.equal(tok[:, 0], model.encode(x[:, :, :1])["codes"][:, 0])  # the first frame coded alone
        video = model.decode_codes(tok)
        first = model.decoder(model.quantizer.codes_to_vectors(tok[:, :1])).clamp(-1, 1)
        assert video.shape == x.shape and torch.allclose(video[:, :, :1], first)
        still = tok.clone()
        still[:, 1:] = 64 + 49 // 2  # every cell (0, 0): the first frame held
        held = model.decode_codes(still)
        assert torch.allclose(held, held[:, :, :1].expand_as(held))
        plain = tok.clone()
        plain[:, 1:] = 5  # codes where motion tokens belong move nothing
        assert torch.allclose(model.decode_codes(plain), held)


def test_conv3d_weight_grad_under_cpu_bf16_matches_fp32_for_short_clips():
    """oneDNN's CPU bf16 conv3d gave garbage weight gradients (NaN at times) when the conv padded time and the
    clip was 2 frames long; Conv3d pads time itself on CPU (bench/bench_conv3d_bf16.py)."""
    from models.layers import Conv3d

    torch.manual_seed(0)
    for shape, channels_last, causal in [((2, 8, 2, 8, 8), True, False), ((2, 32, 2, 16, 16), False, False),
                                         ((1, 32, 2, 8, 8), False, False), ((2, 32, 2, 8, 8), False, True)]:
        conv = Conv3d(shape[1], shape[1], 3, causal=causal)
        ref = Conv3d(shape[1], shape[1], 3, causal=causal)
        ref.load_state_dict(conv.state_dict())
        x = torch.randn(shape)
        g = torch.randn(shape)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x.to(memory_format=torch.channels_last_3d) if channels_last else x)
        y.backward(g.to(y.dtype))
        ref(x).backward(g)
        err = (conv.weight.grad - ref.weight.grad).abs().max() / ref.weight.grad.abs().max()
        assert err < 0.05, (shape, channels_last, causal, float(err))
