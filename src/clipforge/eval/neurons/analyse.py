"""``analyse``: record a layer over a collection, read its units against a vocabulary, score and rank them, and
make each shown unit's panels; ``write`` saves the report (HTML, PNG grids, ``neurons.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.eval.adapter import EvalModel
from clipforge.eval.datasets import EvalDataset
from clipforge.eval.neurons.featvis import visualise
from clipforge.eval.neurons.layers import TEXT_DIRECTIONS, check_units, get_layer, text_directions
from clipforge.eval.neurons.record import Recording, collect_images, record
from clipforge.eval.neurons.report import Shown, UnitPanel, write_report
from clipforge.eval.neurons.score import UnitScore, find_multimodal, score_units
from clipforge.eval.neurons.vocab import (
    image_size,
    load_vocabulary,
    render_words,
    text_activations,
    word_activations,
    zeroshot_labeller,
)

QUANTILES = (0.9, 0.5, 0.1, 0.0)  # the other quantiles a panel shows, one image each
PROMPT = "a photo of a {}."  # the prompt of an ``embedding.text`` direction (and of the zero-shot labels)


@dataclass
class NeuronsResult:
    """What ``analyse`` found.

    Attributes:
        layer: The layer's name.
        kind: Its kind (``residual``, ``mlp``, ``channel``, ``embedding``).
        recording: The recorded activations (``record.Recording``).
        words: The vocabulary.
        word_values: (V, U) activations of the rendered words, columns as ``recording.units``.
        scores: Every recorded unit's multimodal score.
        ranking: The finder's best units (all recorded units, best first, when ``top_units`` is not given).
        panels: The shown units' panels.
    """

    layer: str
    kind: str
    recording: Recording
    words: list[str]
    word_values: np.ndarray
    scores: list[UnitScore]
    ranking: list[UnitScore]
    panels: list[UnitPanel] = field(default_factory=list)

    def summary(self) -> dict[str, str]:
        """A few facts for the report's head."""
        rec = self.recording
        return {"layer": f"{self.layer} ({self.kind}, {len(rec.units)} units recorded)",
                "images": f"{rec.count} ({len(rec.skipped)} skipped)",
                "labels": "the collection's classes" if rec.classes is not None and rec.classes != self.words
                else "zero-shot over the vocabulary",
                "vocabulary": f"{len(self.words)} words",
                "score": "purity of the top images' majority class / rank of its name among the rendered words"}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: the ranking and each shown unit's numbers (image sources, words, values)."""
        rec = self.recording
        units = []
        for p in self.panels:
            col = rec.column(p.unit)
            top = [{"source": rec.sources[int(i)], "value": float(v),
                    "class": rec.classes[int(rec.labels[int(i)])] if rec.classes and rec.labels[int(i)] >= 0
                    else None} for i, v in zip(rec.top_indices[:, col], rec.top_values[:, col])]
            quantiles = [{"quantile": q, "source": rec.sources[i], "value": v}
                         for q, i, v in rec.quantile_examples(p.unit, QUANTILES)]
            order = np.argsort(-self.word_values[:, col], kind="stable")
            units.append({"unit": p.unit, "name": p.name, "score": p.score.to_dict() if p.score else None,
                          "top_images": top, "quantiles": quantiles, "mean": float(rec.mean[col]),
                          "top_words": [{"word": self.words[i], "value": float(self.word_values[i, col])}
                                        for i in order[:len(p.words)]],
                          "top_texts": [{"text": t, "value": v} for t, v in p.texts],
                          "featvis": None if p.featvis is None else {"start": p.featvis.start, "end": p.featvis.end}})
        return {"layer": self.layer, "kind": self.kind, "images": rec.count, "skipped": len(rec.skipped),
                "vocabulary": len(self.words), "ranking": [s.to_dict() for s in self.ranking], "units": units}


def analyse(model: EvalModel, images: EvalDataset, layer_name: str, *, vocabulary: list[str],
            units: list[int] | None = None, top_units: int | None = None, k: int = 9, n_words: int = 8,
            featvis_steps: int = 128, seed: int = 0, batch_size: int = 64, limit: int | None = None,
            progress: bool = False) -> NeuronsResult:
    """Records ``layer_name`` over ``images`` and makes the panels of the units asked for.

    The collection's class names join the vocabulary (so the score can find them); a collection without classes is
    labelled by the model's zero-shot reading over the vocabulary.

    Args:
        model: The model with its transform and text processor.
        images: The collection.
        layer_name: A name of ``list_layers``.
        vocabulary: Vocabulary specs for ``load_vocabulary`` (built-in sets, ``synthetic``, word files).
        units: The units to record, score and show (all the layer's when ``None``).
        top_units: Show only the finder's best ``top_units`` of them; 8 when neither this nor ``units`` is given.
        k: Top images per unit.
        n_words: Top words per unit.
        featvis_steps: Feature-visualisation steps per shown unit (0: none).
        seed: Seeds the reservoir and the feature visualisations.
        batch_size: Images per forward pass.
        limit: Read at most this many images.
        progress: Progress bars.

    Raises:
        ValueError: an unknown layer (listing the valid ones), a unit out of range, an empty vocabulary, no images.
    """
    classes = getattr(images, "classes", None)
    words = load_vocabulary(vocabulary, extra=[c.replace("_", " ") for c in classes or []])
    if layer_name == TEXT_DIRECTIONS:
        from clipforge.eval.prompts import fill

        prompts = model.encode_texts([fill(PROMPT, w) for w in words], normalize=True)
        layer = text_directions(model.model, prompts, words)
    else:
        layer = get_layer(model.model, layer_name)
    chosen = check_units(layer, units)
    if units is None and top_units is None:
        top_units = 8
    if top_units is not None and top_units < 1:
        raise ValueError(f"top_units must be ≥ 1, got {top_units}")
    labeller = zeroshot_labeller(model, words, PROMPT) if not classes else None
    rec = record(model, layer, images, chosen, k=k, batch_size=batch_size, limit=limit, seed=seed,
                 labeller=labeller, progress=progress)
    if labeller is not None:
        rec.classes = words
    word_values = word_activations(model, layer, words, chosen, batch_size)
    scores = score_units(chosen, rec.top_indices, rec.labels, rec.classes, word_values, words, n_words)
    ranking = find_multimodal(scores, top_units or len(chosen))
    result = NeuronsResult(layer.name, layer.kind, rec, words, word_values, scores, ranking)
    shown = [s.unit for s in ranking] if top_units is not None else chosen
    by_unit = {s.unit: s for s in scores}
    wanted = {int(i) for u in shown for i in rec.top_indices[:, rec.column(u)]}
    wanted |= {i for u in shown for _, i, _ in rec.quantile_examples(u, QUANTILES)}
    pictures = collect_images(images, wanted, limit=limit)
    side = image_size(model)
    texts = text_activations(model, words, shown) if layer.kind == "embedding" else None  # axes: the text tower's
    for j, u in enumerate(shown):
        col = rec.column(u)
        top = [Shown(pictures[int(i)], [f"{v:.3g}", _class_of(rec, int(i))])
               for i, v in zip(rec.top_indices[:, col], rec.top_values[:, col]) if int(i) in pictures]
        quantiles = [Shown(pictures[i], [f"q{q:.2f}: {v:.3g}", _class_of(rec, i)])
                     for q, i, v in rec.quantile_examples(u, QUANTILES) if i in pictures]
        order = np.argsort(-word_values[:, col], kind="stable")[:n_words]
        rendered = render_words([words[i] for i in order], side)
        shown_words = [Shown(im, [words[i], f"{word_values[i, col]:.3g}"]) for im, i in zip(rendered, order)]
        top_texts: list[tuple[str, float]] = []
        if texts is not None:
            best = np.argsort(-texts[:, j], kind="stable")[:n_words]
            top_texts = [(words[i], float(texts[i, j])) for i in best]
        fv = visualise(model, layer, u, side, steps=featvis_steps, seed=seed + u) if featvis_steps > 0 else None
        name = layer.names[u] if layer.names else None
        result.panels.append(UnitPanel(u, top, quantiles, shown_words, top_texts, by_unit[u], fv, name))
    return result


def _class_of(rec: Recording, index: int) -> str:
    label = int(rec.labels[index])
    return rec.classes[label] if rec.classes is not None and label >= 0 else ""


def write(result: NeuronsResult, output: str | Path) -> Path:
    """Writes the report into ``output``: ``index.html``, ``unit-<n>.png`` per shown unit and ``neurons.json``;
    returns the page's path."""
    page = write_report(output, result.panels, result.layer, result.summary(),
                        result.ranking if len(result.ranking) > 1 else [])
    (Path(output) / "neurons.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return page
