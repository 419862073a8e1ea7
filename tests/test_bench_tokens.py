"""bench/bench_tokens.py: the near-duplicate code merge behind its --merge persistence numbers."""
import torch

from bench.bench_tokens import merge_codes


def test_merge_codes_maps_each_code_to_the_most_used_code_nearby():
    codebook = torch.tensor([[0.0, 0.0], [0.1, 0.0], [1.0, 0.0], [1.05, 0.0], [5.0, 5.0]])
    codes = torch.tensor([[1, 1, 1, 0], [3, 3, 2, 4]])  # code 1 used more than 0, code 3 more than 2
    assert merge_codes(codebook, codes, 0.2).tolist() == [1, 1, 3, 3, 4]
    assert merge_codes(codebook, codes, 0.0).tolist() == [0, 1, 2, 3, 4]  # nothing closer than 0
    assert merge_codes(codebook, codes, 100.0).tolist() == [1, 1, 1, 1, 1]  # all onto the most used
