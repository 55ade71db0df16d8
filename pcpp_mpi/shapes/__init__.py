"""Procedural shapes scenes for the built-in tiny model: vocabulary, scene generator and
captions, renderer, tokenizer and text encoder, a caption checker and a plain sampler.

See docs/TINY_MODEL.md.
"""
