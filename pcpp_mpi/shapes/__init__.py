"""The tiny model's data set and its evaluation: scene generator and captions, renderer,
training token ids, a caption checker, the evaluation job and a plain sampler.

Used by training (tools/train_tiny.py), evaluation (tools/quality_study.py,
tools/check_captions.py) and tests; a run never imports it. What the model itself needs at
run time (vocabulary, tokenizer, text encoder) is in :mod:`pcpp_mpi.models`
(``tiny_vocab``, ``tiny_text``). See docs/TINY_MODEL.md.
"""
