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
