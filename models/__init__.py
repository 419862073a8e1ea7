"""MiniSora models: video autoencoders and (later) latent generators."""
