"""The denoising engine: a sharded latent, one band per rank."""
