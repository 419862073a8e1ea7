"""MiniSora models, one file per model family:

* vqvae -- video autoencoders (plain AE, KL-VAE, VQ-VAE, KL+VQ; presets by name) giving latents or tokens;
* latte, stdit -- latent diffusion transformers (Latte, ST-DiT), with cfg -- their shared label conditioning
  and classifier-free guidance;
* gpt, mamba -- next-token models over VQ codes (GPT with a KV cache and sparse context, Mamba);
* layers -- the building blocks they share (3D convs and resampling, norms, attention, embeddings).
"""

import importlib

# kind (as stored in checkpoints' "minisora" entry) -> (module, config dataclass, model class)
MODELS = {
    "vae": ("models.vqvae", "VAEConfig", "VideoVAE"),
    "latte": ("models.latte", "LatteConfig", "Latte"),
    "stdit": ("models.stdit", "STDiTConfig", "STDiT"),
    "gpt": ("models.gpt", "GPTConfig", "GPT"),
    "mamba": ("models.mamba", "MambaConfig", "MambaLM"),
}


def config_class(kind: str):
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r} (one of {', '.join(MODELS)})")
    module, config, _ = MODELS[kind]
    return getattr(importlib.import_module(module), config)


def build_model(kind: str, config: dict):
    """The model of a kind from its config dict (a checkpoint's minisora.config)."""
    cls = config_class(kind)
    cfg = cls.from_dict(config) if hasattr(cls, "from_dict") else cls(**config)
    return getattr(importlib.import_module(MODELS[kind][0]), MODELS[kind][2])(cfg)
