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
