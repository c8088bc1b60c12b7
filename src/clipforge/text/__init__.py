"""Turning strings into model input.

One role, ``TextProcessor``, with three implementations: the byte-level BPE tokenizer (CLIP,
``clipforge.text.bpe``), SentencePiece (SigLIP and SigLIP 2, ``clipforge.text.sentencepiece``) and the Unifont
renderer (CLIPPO, ``clipforge.text.render``). ``build_text_processor``
picks the one a model config asks for, so no caller branches on the model family.

Importing this package or any processor module does not import torch (only ``processor(texts)`` does), so the
torch-free ONNX runtime (``clipforge.deploy``) tokenises and renders with the very same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch


@runtime_checkable
class TextProcessor(Protocol):
    """Strings in, model input out: what every text processor offers and a caller may rely on.

    - ``processor(texts)`` takes one string or a sequence of them and returns a tensor whose first dimension is
      the number of texts, ready for ``model.encode_text`` (BPE: int64 token ids ``(N, context_length)``;
      renderer: uint8 pixels ``(N, 3, H, W)``). The same strings always give the same tensor.
    - ``processor.numpy(texts)`` gives the same values as a numpy array (same dtype and shape; the call above is
      ``torch.from_numpy`` of it, or for the renderer painted with torch, pixel-identical) without importing torch:
      the input of an exported ONNX tower (``clipforge.deploy``).
    - ``save_pretrained(directory)`` writes whatever files the processor needs to be rebuilt beside a saved model
      (the BPE merges) and returns the file's path, or ``None`` when the model's config alone rebuilds it
      (the renderer).
    """

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor: ...

    def numpy(self, texts: str | Sequence[str]) -> np.ndarray: ...

    def save_pretrained(self, directory: str | Path) -> Path | None: ...


def saved_vocabulary(directory: str | Path | None) -> Path | None:
    """The vocabulary file a saved model directory carries (``*.txt.gz``, BPE merges), or ``None``."""
    if directory is None or not Path(directory).is_dir():
        return None
    candidates = sorted(Path(directory).glob("*.txt.gz"))
    return candidates[0] if candidates else None


def check_text_config(config: Any) -> None:
    """Validates the text processor's part of a model config without building the processor (no font or
    vocabulary is read).

    Raises:
        ConfigError: a field of the renderer's config (``render.<field>``) is unknown or out of range.
    """
    if config.family == "clippo":
        from clipforge.text.render import RenderConfig

        RenderConfig.from_dict({"image_size": config.vision.image_size, **config.render})
    elif config.family == "siglip" and config.tokenizer.get("kind") == "sentencepiece":
        _sentencepiece_config(config)


def _sentencepiece_config(config: Any) -> Any:
    """The ``SentencePieceConfig`` a SigLIP model config's ``tokenizer`` mapping describes, at the model's context."""
    from clipforge.text.sentencepiece import SentencePieceConfig

    fields = {k: v for k, v in config.tokenizer.items() if k != "kind"}
    return SentencePieceConfig.from_dict({"context_length": config.text.context_length, **fields})


def _sentencepiece(config: Any, directory: str | Path | None) -> TextProcessor:
    """SigLIP's SentencePiece tokenizer, from the model file a saved model directory carries."""
    from clipforge.text.sentencepiece import SentencePieceTokenizer

    sp_config = _sentencepiece_config(config)
    if directory is None or not Path(directory).is_dir():
        raise FileNotFoundError(f"this SigLIP model's tokenizer is a SentencePiece model ({sp_config.model_file}), "
                                "which travels with the model directory: load the model with clipforge.load(directory "
                                "or hub name), or pass get_text_processor(model, directory)")
    return SentencePieceTokenizer.from_directory(directory, sp_config)


def build_text_processor(config: Any, directory: str | Path | None = None) -> TextProcessor:
    """The text processor a model config asks for.

    Args:
        config: A model config. ``family == "clip"`` gets the BPE tokenizer with the model's context
            length (and the vocabulary saved in ``directory``, if any, else OpenAI's); ``"clippo"`` gets
            the Unifont renderer configured by ``config.render`` at the model's image size; ``"siglip"`` gets what
            ``config.tokenizer`` names: SentencePiece (the model file in ``directory``) or the BPE tokenizer.
        directory: A saved model directory that may carry its own vocabulary.

    Raises:
        FileNotFoundError: a SentencePiece model is asked for and ``directory`` does not hold it.
        ValueError: the SentencePiece file is not a SentencePiece model.
    """
    if config.family == "clippo":
        from clipforge.text.render import RenderConfig, UnifontRenderer

        render = {"image_size": config.vision.image_size, **config.render}
        return UnifontRenderer(RenderConfig.from_dict(render))
    from clipforge.text.bpe import BPETokenizer

    if config.family == "siglip" and config.tokenizer.get("kind") == "sentencepiece":
        return _sentencepiece(config, directory)

    return BPETokenizer(vocab_path=saved_vocabulary(directory), context_length=config.text.context_length)


__all__ = ["TextProcessor", "build_text_processor", "check_text_config", "saved_vocabulary"]
