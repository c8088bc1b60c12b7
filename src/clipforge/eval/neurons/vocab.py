"""The words a unit is read against: a vocabulary, rendered as images of text and put through the image tower.

A vocabulary is the union, in order and without repeats, of any of: the class names of a shipped set
(``imagenet``, ``cifar10``, ``cifar100``: ``clipforge.eval.prompts``), ``synthetic`` (the synthetic world's words:
its shapes, colours, sizes and backgrounds), or a word file (``.txt``, one a line, or a ``.json`` list).

Each word is drawn with the Unifont renderer (``clipforge.text.render``, CLIPPO's: black 16-pixel glyphs on grey, from
the top left) at the model's input size and goes through the image tower like a photo: a unit's top words are those
whose rendered images excite it most. For ``embedding`` units the words also go through the text tower (top texts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from clipforge.eval.adapter import EvalModel
from clipforge.eval.neurons.layers import Layer, layer_activations

SYNTHETIC = "synthetic"


def synthetic_words() -> list[str]:
    """The synthetic world's words: shapes, colours, sizes and backgrounds (``clipforge.data.synthetic.vocab``)."""
    from clipforge.data.synthetic import BACKGROUNDS, COLOURS, SHAPES, SIZES

    return [*SHAPES, *COLOURS, *SIZES, *BACKGROUNDS]


def load_vocabulary(specs: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """The words of ``specs`` (built-in set names, ``synthetic``, or word files) and ``extra``, in order, once each.

    Raises:
        FileNotFoundError: a spec is neither a built-in name nor a file.
        ValueError: the vocabulary is empty.
    """
    from clipforge.eval.prompts import BUILTIN, load_classnames, read_lines

    words: list[str] = []
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        if spec == SYNTHETIC:
            words += synthetic_words()
        elif spec in BUILTIN:
            words += load_classnames(spec)
        else:
            words += read_lines(spec, "words")
    words += list(extra)
    out = list(dict.fromkeys(w.strip() for w in words if w.strip()))
    if not out:
        raise ValueError("empty vocabulary: give --vocab a built-in set (imagenet, cifar10, cifar100), 'synthetic' "
                         "or a file of words, one a line")
    return out


def image_size(model: EvalModel) -> int:
    """The side of the model's input images: what its transform makes of a blank image."""
    return int(model.transform(Image.new("RGB", (32, 32))).shape[-1])


def render_words(words: Sequence[str], size: int) -> list[Image.Image]:
    """Each word as an RGB image of ``size`` pixels, drawn by the Unifont renderer."""
    from clipforge.text.render import RenderConfig, UnifontRenderer

    pixels = UnifontRenderer(RenderConfig(image_size=size)).render(list(words))  # (N, H, W, 3) uint8
    return [Image.fromarray(p, "RGB") for p in pixels]


def word_activations(model: EvalModel, layer: Layer, words: Sequence[str], units: list[int],
                     batch_size: int = 64) -> np.ndarray:
    """The activations (V, U) of ``units`` on each word rendered as an image."""
    images = render_words(words, image_size(model))
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = torch.stack([model.transform(im) for im in images[i:i + batch_size]]).to(model.device)
            out.append(layer_activations(model.model, layer, batch).float().cpu()[:, units])
    return torch.cat(out).numpy()


def text_activations(model: EvalModel, words: Sequence[str], units: list[int], batch_size: int = 256) -> np.ndarray:
    """The coordinates (V, U) of ``units`` (embedding axes) of each word's normalised text embedding."""
    return model.encode_texts(list(words), normalize=True, batch_size=batch_size)[:, units].numpy()


def zeroshot_labeller(model: EvalModel, words: Sequence[str], template: str = "a photo of a {}."):
    """A labeller for ``record``: image embeddings (B, D) → the index of the nearest word's prompt (zero-shot)."""
    from clipforge.eval.prompts import fill

    classifier = model.encode_texts([fill(template, w) for w in words], normalize=True).to(model.device)  # (V, D)

    def label(embeddings: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.normalize(embeddings, dim=-1) @ classifier.T).argmax(dim=-1).cpu()

    return label
