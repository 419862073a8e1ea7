"""Encode every clip of a split into VQ codes: data/latents/<dataset>__<vae>_tokens_<T>frames_<split>.npy
((N, T/ts, H/ss, W/ss) in the smallest unsigned dtype that holds n_codes) + a JSON sidecar. Resumable;
`--decode N` checks the file by decoding N rows.

  python tokenize_videos.py --dataset flying_mnist --batch_size 8
  python tokenize_videos.py --dataset flying_mnist_demo --resolution 64 --sequence_length 16 \\
      --vae runs/train_vqvae/<run>/checkpoints/last.ckpt --decode 4
"""
from minisora import encode


def main(argv=None):
    encode.main(argv, "tokens", __doc__)


if __name__ == "__main__":
    main()
