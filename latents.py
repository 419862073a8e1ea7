"""Encode every clip of a split into continuous latents: data/latents/<dataset>__<vae>_latents_<T>frames_<split>.npy
(float32 (N, C, T/ts, H/ss, W/ss)) + a JSON sidecar (VAE reference and config, scaling factor, per-channel
mean/std, source videos in row order). Resumable; `--decode N` checks the file by decoding N rows.

  python latents.py --dataset flying_mnist --batch_size 1 --vae stabilityai/sd-vae-ft-mse
  python latents.py --dataset flying_mnist --vae zzsi_kungfu/videogpt/model-nilqq143:v14
  python latents.py --dataset flying_mnist_demo --resolution 64 --sequence_length 16 \\
      --vae runs/train_vqvae/<run>/checkpoints/last.ckpt --decode 4

Pretrained image VAEs (diffusers AutoencoderKL) encode frame by frame from [-1, 1] inputs, store the
posterior mean times their scaling_factor; project VAEs encode whole clips (KL: posterior mean; VQ: the
quantized vectors).
"""
from minisora import encode


def main(argv=None):
    encode.main(argv, "latents", __doc__)


if __name__ == "__main__":
    main()
