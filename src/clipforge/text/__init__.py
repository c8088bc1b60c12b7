"""Turning strings into model input.

One role, two implementations: the byte-level BPE tokenizer (CLIP) and the Unifont renderer (CLIPPO).
Both are callables ``processor(texts) -> torch.Tensor`` built from the model's config, so no caller
branches on the model family.
"""
