"""Train a spatio-temporal video autoencoder: VQ-VAE (tokens for the GPT), KL-VAE (latents for
diffusion) or plain AE, selected by --network_variant (see models/vqvae.py PRESETS).

Seed commands (GPU), and a CPU-small run:
  python train_vqvae.py --batch_size 2 --resolution 256 --sequence_length 32 --embedding_dim 4 --n_codes 5120 \\
      --limit_train_batches 1.0 --limit_val_batches 0.25 --epochs 150 --save_every_n_epochs 5 \\
      --low_utilization_cost 0.1 --network_variant s8_b --lr 0.001 --kl_loss_weight 0.01 --commitment_cost 0.25 --track
  python train_vqvae.py ... --network_variant vae_s4t4_b --kl_loss_weight 0.1 ...
  python train_vqvae.py --dataset flying_mnist_demo --resolution 64 --sequence_length 16 --network_variant vae_s4t4_m

Writes runs/train_vqvae/<run_name>/{config.json, metrics.csv, samples/, checkpoints/last.ckpt}. A checkpoint
(or its wandb artifact name, with --track: <entity>/<project>/model-<run id>:vN) is what --vae takes in later stages.
"""
from __future__ import annotations

import sys

from minisora.checkpoint import load_checkpoint, module_state_dict
from minisora.cli import Parser, add_loop_args, add_run_args
from minisora.data import VideoDataset, collate_videos
from minisora.lit_vae import LitVAE
from minisora.resolve import resolve_checkpoint_path
from minisora.training import fit, start_run
from models.layers import TEMPORAL_PADDINGS
from models.vqvae import PRESETS, VideoVAE, make_config


def parse_args(argv=None):
    p = Parser(__doc__)
    m = p.add_argument_group("model")
    m.add_argument("--network_variant", default="s8_b", choices=sorted(PRESETS), metavar="VARIANT",
                   help="preset name (default s8_b: 4x4x4 VQ-VAE). One of: " + ", ".join(PRESETS))
    m.add_argument("--embedding_dim", type=int, default=4, help="latent channels E (upstream default 256; seed: 4)")
    m.add_argument("--n_codes", type=int, default=2048, help="codebook size K for quantizing variants (seed: 5120)")
    m.add_argument("--channels", type=int, nargs="+", default=None, help="override the preset's per-level widths")
    m.add_argument("--n_hiddens", type=int, default=None, help="upstream flag: if given, width of the deepest level")
    m.add_argument("--n_res_layers", type=int, default=None, help="upstream flag: if given, res blocks per level")
    m.add_argument("--downsample", type=int, nargs=3, default=None, metavar=("T", "H", "W"),
                   help="upstream flag: if given, must equal the variant's strides (checked)")
    m.add_argument("--kl_loss_weight", type=float, default=1.0, help="weight of the KL term (mean per latent element); KL variants")
    m.add_argument("--l1_weight", type=float, default=0.0, help="add an L1 reconstruction term with this weight")
    m.add_argument("--chroma_weight", type=float, default=0.0,
                   help="add an MSE on chroma (colour minus grey) with this weight: colour is learned far sooner")
    m.add_argument("--quantizer", default="vq", choices=["vq", "fsq"],
                   help="quantizing variants: vq (EMA codebook of --n_codes) or fsq (finite scalar quantization: each "
                        "latent channel rounded to --fsq_levels values, prod(levels) codes, none can die). fsq "
                        "quantizes any variant and sets --embedding_dim to len(--fsq_levels)")
    m.add_argument("--fsq_levels", type=int, nargs="+", default=[8, 5, 5, 5], help="FSQ levels per latent channel")
    m.add_argument("--commitment_cost", type=float, default=0.25, help="VQ commitment weight beta")
    m.add_argument("--ema_decay", type=float, default=0.99, help="VQ codebook EMA decay")
    m.add_argument("--low_utilization_cost", type=float, default=0.0,
                   help="pull of every code toward its nearest encoder output (revives dead codes); VQ variants")
    m.add_argument("--temporal_padding", default=None, choices=TEMPORAL_PADDINGS,
                   help="how convolutions pad time at a clip's ends (default: the preset's; replicate for s4t1_m_vq, else zeros). 'replicate' "
                        "(copies of the edge frames) lets a tokenizer give unchanged content the same code at the "
                        "clip's edges as inside it (bench/bench_tokens.py, code persistence)")
    m.add_argument("--init_from", default=None, metavar="CKPT",
                   help="warm start: encoder/decoder weights from a trained VAE checkpoint (path or wandb artifact) "
                        "of the same strides and widths, e.g. a KL-VAE to start a VQ tokenizer (its posterior mean "
                        "becomes the latent; --embedding_dim must equal its E). Optimizer and codebook start fresh")
    m.add_argument("--reinit_every_n_epochs", type=int, default=None, help="re-seed unused codes from encoder outputs every n epochs")
    d = p.add_argument_group("data")
    d.add_argument("--resolution", type=int, default=64)
    d.add_argument("--sequence_length", type=int, default=16, help="frames per training clip")
    d.add_argument("--frame_stride", type=int, default=1)
    d.add_argument("--max_videos", type=int, default=None, help="use only the first N train videos")
    t = p.add_argument_group("VAE training")
    t.add_argument("--limit_train_batches", type=float, default=1.0)
    t.add_argument("--limit_val_batches", type=float, default=1.0)
    t.add_argument("--save_every_n_epochs", type=int, default=1, help="keep a checkpoint every N epochs (with --ckpt_every 0)")
    t.add_argument("--log_videos_every", type=int, default=500, help="save a train reconstruction video every N steps (0: off)")
    t.add_argument("--watch_gradients", action="store_true", help="wandb.watch the model (with --track)")
    add_loop_args(p, warmup=False, samples=False)
    add_run_args(p, project="videogpt")
    p.set_defaults(epochs=10, lr=1e-3, log_every=50, ckpt_every=0, clip_grad=1.0)
    a = p.parse_args(argv)
    if a.limit_train_batches > 1:
        a.limit_train_batches = int(a.limit_train_batches)
    if a.limit_val_batches > 1:
        a.limit_val_batches = int(a.limit_val_batches)
    return a


def build_config(a):
    over = dict(embedding_dim=a.embedding_dim, n_codes=a.n_codes, kl_weight=a.kl_loss_weight,
                commitment_cost=a.commitment_cost, l1_weight=a.l1_weight, chroma_weight=a.chroma_weight, ema_decay=a.ema_decay, low_utilization_cost=a.low_utilization_cost)
    if a.quantizer == "fsq":
        if a.embedding_dim != len(a.fsq_levels):
            print(f"[train_vqvae] --quantizer fsq: embedding_dim {len(a.fsq_levels)} (one channel per FSQ level count)")
        over.update(quantizer="fsq", fsq_levels=tuple(a.fsq_levels), embedding_dim=len(a.fsq_levels))
    preset = PRESETS[a.network_variant]
    channels = list(a.channels or preset["channels"])
    if a.n_hiddens:
        channels[-1] = a.n_hiddens
    over["channels"] = tuple(channels)
    if a.n_res_layers is not None:
        over.update(num_res_blocks=a.n_res_layers, res_blocks=None)
    if a.temporal_padding:
        over["temporal_padding"] = a.temporal_padding
    cfg = make_config(a.network_variant, **over)
    if a.downsample and tuple(a.downsample) != (cfg.temporal_stride, cfg.spatial_stride, cfg.spatial_stride):
        raise ValueError(f"--downsample {a.downsample} does not match {a.network_variant}'s strides "
                         f"(t={cfg.temporal_stride}, h=w={cfg.spatial_stride}); choose another --network_variant")
    return cfg


def main(argv=None):
    a = parse_args(argv)
    try:
        cfg = build_config(a)
    except ValueError as e:
        sys.exit(f"error: {e}")
    out = start_run(a, "train_vqvae")
    common = dict(dataset=a.dataset, data_dir=a.data_dir, resolution=a.resolution, sequence_length=a.sequence_length,
                  frame_stride=a.frame_stride, as_uint8=True, on_error=a.on_bad_video)
    try:
        train = VideoDataset(split="train", random_clip=True, max_videos=a.max_videos, **common)
        val = VideoDataset(split="val", **common)
        VideoVAE(cfg).latent_shape(a.sequence_length, a.resolution, a.resolution)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    model = LitVAE(cfg.to_dict(), lr=a.lr, reinit_every_n_epochs=a.reinit_every_n_epochs,
                   log_videos_every=a.log_videos_every, sample_dir=str(out / "samples"),
                   data={k: v for k, v in common.items() if k != "as_uint8"})
    if a.init_from and not a.resume_from:
        try:
            model.model.load_autoencoder(module_state_dict(load_checkpoint(resolve_checkpoint_path(a.init_from))))
        except (ValueError, FileNotFoundError) as e:
            sys.exit(f"error: --init_from {a.init_from}: {e}")
        print(f"[train_vqvae] warm start: encoder and decoder from {a.init_from}")
    n_params = sum(p.numel() for p in model.model.parameters())
    print(f"[train_vqvae] {a.network_variant}: {n_params / 1e6:.3f}M params, strides t{cfg.temporal_stride} "
          f"s{cfg.spatial_stride}, E={cfg.embedding_dim}, quantize={cfg.quantize and cfg.quantizer} (K={cfg.n_codes}), kl={cfg.kl}; "
          f"{len(train)} train / {len(val)} val clips; run dir {out}")
    kept = dict(every_n_train_steps=a.ckpt_every, filename="step{step:07d}") if a.ckpt_every else \
        dict(every_n_epochs=a.save_every_n_epochs, filename="epoch{epoch:03d}")
    fit(a, model, train, val, out=out, script="train_vqvae", checkpoints=dict(save_top_k=-1, **kept),
        collate_fn=collate_videos, limit_train_batches=a.limit_train_batches, limit_val_batches=a.limit_val_batches,
        watch=a.track and a.watch_gradients)


if __name__ == "__main__":
    main()
