"""The VAE decoder as a band-parallel family: every rank decodes its band of the latent."""
