"""bench/bench_tokens.py: its --merge numbers come from the tokenizer's own merge, and leave the tokenizer as it was."""
import torch

from bench.bench_tokens import encode_merged
from models.vqvae import VideoVAE, make_config
from minisora.resolve import VAEHandle


def test_encode_merged_is_the_tokenizers_merge_and_restores_it():
    torch.manual_seed(0)
    m = VideoVAE(make_config("s4t4_b_vq", channels=(8, 8, 8), n_codes=32, embedding_dim=4)).eval()
    x = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    with torch.no_grad():
        z = m.encode(x)["z"]
    m.quantizer.codebook.copy_(z.flatten(2).transpose(1, 2).reshape(-1, 4)[:32])  # codes in the data's range
    vae = VAEHandle(m, "project", "tiny", "tiny", 4, 4, 4, quantize=True, n_codes=32)
    before = vae.encode_codes(x)
    assert torch.equal(encode_merged(vae, x, 0.0), before)  # nothing is closer than 0
    assert encode_merged(vae, x, 1e9).unique().numel() == 1  # everything onto the most used code
    assert m.quantizer.active.all() and torch.equal(vae.encode_codes(x), before)  # left as it was


def test_code_groups_pool_what_decodes_alike_and_score_the_picture_not_the_code():
    from bench.bench_tokens import codebook_groups, sampler_losses
    from models.gpt import GPT, GPTConfig
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    codebook = torch.cat([c + 0.1 * torch.randn(4, 2) for c in centres])  # 3 clusters of 4 codes
    in_use = torch.ones(12, dtype=torch.bool)
    in_use[3] = False  # a code not in use joins its nearest centre all the same
    grp = codebook_groups(codebook, in_use, 3)
    assert sorted(grp.view(3, 4).unique(dim=1).flatten().tolist()) == [0, 1, 2]  # each cluster one group, all distinct
    assert torch.equal(codebook_groups(codebook, in_use, 50).unique(), torch.arange(11))  # k > codes in use: 11 groups
    gpt = GPT(GPTConfig(vocab_size=13, grid=(2, 2, 2), block_size=4, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    seq = torch.cat([torch.full((3, 1), 12), torch.randint(0, 12, (3, 8))], 1)
    s = sampler_losses(gpt, seq, {3: grp, 1: torch.zeros(12, dtype=torch.long)})
    assert s["loss"].shape == s["hit"].shape == (3, 8)
    assert (s["loss 3"] <= s["loss"] + 1e-5).all()  # a group's probability is at least its code's
    assert torch.allclose(s["loss 1"], torch.zeros(3, 8), atol=1e-5) and (s["hit 1"] == 1).all()  # one group: certain


def test_shifted_copies_finds_a_digit_carried_along_its_motion():
    from bench.bench_tokens import shifted_copies
    codes = torch.zeros(1, 3, 8, 8, dtype=torch.long)
    digit = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    for t in range(3):  # a 2x2 "digit" of codes 1..4 moving one cell right per frame
        codes[0, t, 2:4, 1 + t:3 + t] = torch.tensor([[1, 2], [3, 4]])
        digit[0, t, 2:4, 1 + t:3 + t] = True
    r = shifted_copies(codes, digit)
    assert r["best_shift"] == 1.0 and r["same_cell"] == 0.0  # no digit cell keeps its code in place
    codes[0, 2, 2, 3] = 9  # one of frame 2's four cells changes its code
    assert shifted_copies(codes, digit)["best_shift"] == 7 / 8


def test_motion_compensated_prediction_carries_a_moving_patch_on():
    from bench.bench_tokens import predict_next_frame, translate
    frames = torch.full((3, 1, 3, 32, 32), -1.0)
    patch = torch.rand(3, 5, 6) * 1.5 - 0.5  # textured, non-black
    for t in range(3):  # moving (1, 2) px per frame
        frames[t, 0, :, 8 + t:13 + t, 6 + 2 * t:12 + 2 * t] = patch
    pred = predict_next_frame(frames[0], frames[1])
    assert torch.equal(pred, frames[2])  # constant velocity: the next frame exactly
    assert not torch.equal(frames[1], frames[2])  # (copying the last frame would not be)
    x = torch.arange(16.0).view(1, 4, 4)
    assert torch.equal(translate(x, 1, -2)[0, 1:, :2], x[0, :3, 2:]) and (translate(x, 1, -2)[0, 0] == -1).all()


def test_code_sensitivity_of_a_tokenizer_that_codes_each_pixel():
    """A 'tokenizer' whose code is a cell's pixel pattern: alone = clip codes, a whole-cell shift keeps every code."""
    from bench.bench_tokens import code_sensitivity

    class PixelCodes:  # cell = 2x2 px of one channel, binarised: 16 codes, no temporal context
        def encode_codes(self, v):
            b = (v[:, 0] > 0).long()  # (N, T, H, W)
            return b[..., ::2, ::2] + 2 * b[..., ::2, 1::2] + 4 * b[..., 1::2, ::2] + 8 * b[..., 1::2, 1::2]

        def decode_codes(self, c):
            bits = torch.stack([(c >> k) & 1 for k in range(4)], -1).float() * 2 - 1  # (N, T, h, w, 4)
            img = rearrange(bits, "n t h w (a b) -> n t (h a) (w b)", a=2, b=2)
            return img[:, None].expand(-1, 3, -1, -1, -1)

    from einops import rearrange
    torch.manual_seed(0)
    x = (torch.rand(2, 1, 4, 16, 16) > 0.5).float().expand(-1, 3, -1, -1, -1) * 2 - 1
    vae = PixelCodes()
    vae.device = "cpu"
    codes = vae.encode_codes(x)
    fg = torch.ones_like(codes, dtype=torch.bool)
    r = code_sensitivity(vae, x, codes, fg)
    assert r["frame encoded alone"] == 1.0 and r["clip moved 2 px"] == 1.0  # 2 px = one cell: every code kept
    _, mse_copy = r["pixel MSE against real frames, prediction / copying frame t-1 (real frames)"]
    assert mse_copy > 0 and r["frames encoded alone, decoded: PSNR"] > 0
    assert r["clip moved 1 px"] < 0.5  # half a cell: the pattern changes
