"""Turning strings into model input.

One role, two implementations: the byte-level BPE tokenizer (CLIP) and the Unifont renderer (CLIPPO).
Both are callables ``processor(texts) -> torch.Tensor`` built from the model's config, so no caller
branches on the model family.
"""

from pathlib import Path
from typing import Any


def build_text_processor(config: Any, directory: str | Path | None = None) -> Any:
    """The text processor a model config asks for.

    Args:
        config: A model config. ``family == "clip"`` gets the BPE tokenizer with the model's context
            length (and the vocabulary saved in ``directory``, if any, else OpenAI's); ``"clippo"`` gets
            the Unifont renderer configured by ``config.render`` at the model's image size.
        directory: A saved model directory that may carry its own vocabulary.
    """
    if config.family == "clippo":
        from clipforge.text.render import RenderConfig, UnifontRenderer

        render = {"image_size": config.vision.image_size, **config.render}
        return UnifontRenderer(RenderConfig.from_dict(render))
    from clipforge.text.bpe import BPETokenizer

    vocab = None
    if directory is not None:
        candidates = sorted(Path(directory).glob("*.txt.gz"))
        vocab = candidates[0] if candidates else None
    return BPETokenizer(vocab_path=vocab, context_length=config.text.context_length)
