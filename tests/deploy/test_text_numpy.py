"""Every text processor's ``numpy(texts)`` (what the torch-free runtime feeds the ONNX towers) equals its torch call:
same ids or pixels, same dtype and shape; and the text package imports without torch."""

from __future__ import annotations

import numpy as np
import pytest

from clipforge.text import TextProcessor
from clipforge.text.bpe import BPETokenizer
from clipforge.text.render import RenderConfig, UnifontRenderer

TEXTS = ["a photo of a cat", "", "Two DOGS & a &amp; cat!!", "café naïve über straße 東京 写真 صورة كلب",
         "word " * 100, "  spaces\tand\nnewlines  ", "</s> <unk> <|endoftext|>", "😀🐶👍🏽", "x" * 9000]


def same(array: np.ndarray, tensor) -> None:
    assert isinstance(array, np.ndarray)
    assert str(array.dtype) == str(tensor.dtype).removeprefix("torch.").replace("long", "int64")
    np.testing.assert_array_equal(array, tensor.numpy())


@pytest.mark.parametrize("context", [77, 8, 2])
def test_bpe(context):
    tokenizer = BPETokenizer(context_length=context)
    assert isinstance(tokenizer, TextProcessor)
    same(tokenizer.numpy(TEXTS), tokenizer(TEXTS))
    same(tokenizer.numpy("one text"), tokenizer("one text"))
    same(tokenizer.numpy(TEXTS, context_length=5), tokenizer(TEXTS, context_length=5))
    assert tokenizer.numpy(TEXTS).shape == (len(TEXTS), context)
    row = tokenizer.numpy("a photo of a cat")[0]
    assert tokenizer.decode(row) == tokenizer.decode(row.tolist())  # arrays decode as lists do


def test_bpe_without_truncation_raises_the_same():
    tokenizer = BPETokenizer(context_length=8, truncate=False)
    with pytest.raises(ValueError, match="text 2 has 9 tokens, more than the context length 8"):
        tokenizer.numpy(TEXTS)
    with pytest.raises(TypeError, match="text 1: expected a string"):
        tokenizer.numpy(["ok", 3])


@pytest.mark.parametrize("style", ["siglip", "gemma"])
def test_sentencepiece(style, tmp_path):
    pytest.importorskip("sentencepiece")
    from clipforge.text.sentencepiece import SentencePieceConfig, SentencePieceTokenizer
    from helpers.spm import train_spm

    tokenizer = SentencePieceTokenizer(train_spm(tmp_path, style=style), SentencePieceConfig(style=style,
                                                                                             context_length=16))
    assert isinstance(tokenizer, TextProcessor)
    same(tokenizer.numpy(TEXTS), tokenizer(TEXTS))
    same(tokenizer.numpy(TEXTS, context_length=3), tokenizer(TEXTS, context_length=3))
    assert tokenizer.decode(tokenizer.numpy(["a photo"])[0]) == tokenizer.decode(tokenizer(["a photo"])[0])


@pytest.mark.parametrize("config", [RenderConfig(image_size=64), RenderConfig(image_size=40, mode="improved"),
                                    RenderConfig(image_size=48, mode="improved", monospace=True, ink=255,
                                                 background=3)], ids=["big_vision", "improved", "monospace"])
def test_renderer(config):
    renderer = UnifontRenderer(config)
    assert isinstance(renderer, TextProcessor)
    pixels = renderer.numpy(TEXTS)
    same(pixels, renderer(TEXTS))
    assert pixels.shape == (len(TEXTS), 3, config.image_size, config.image_size) and pixels.flags.c_contiguous
    assert len(np.unique(pixels[0])) == 2  # ink on background: the comparison is not between blank images
