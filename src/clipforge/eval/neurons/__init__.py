"""Multimodal neurons (Goh et al. 2021): what excites a unit of a CLIP or CLIPPO image tower, in photos and in words.

For the units of one layer (``layers``: a ViT block's residual channel or MLP neuron, a ResNet stage's channel, an
axis of the joint embedding space) over any collection of images (``record``: streamed, one pass), a report shows
each unit's top images and images from other quantiles, its top words (``vocab``: a vocabulary rendered as images of
text with the Unifont renderer and put through the image tower; for embedding axes also the top texts through the
text tower) and a feature visualisation (``featvis``: Lucid's decorrelated Fourier parameterisation with jitter,
scaling and rotation). The multimodal score (``score``) says how well a unit's top images and top rendered words name
the same concept, and the finder ranks units by it. ``report`` writes an HTML page and a PNG grid per unit::

    model = EvalModel(*clipforge.load("runs/quickstart/final"))
    images = open_images("synthetic:test:2000", image_size=64)
    result = analyse(model, images, "visual.layer4", vocabulary=["synthetic"], top_units=8)
    write(result, "neurons/")                     # index.html, unit-<n>.png, neurons.json

``clipforge neurons`` runs the same from the command line (``clipforge.cli.neurons``).
"""

from clipforge.eval.neurons.analyse import QUANTILES, NeuronsResult, analyse, write
from clipforge.eval.neurons.featvis import FeatureVisualisation, FourierImage, visualise
from clipforge.eval.neurons.layers import Layer, check_units, get_layer, layer_activations, list_layers
from clipforge.eval.neurons.record import Recording, SyntheticImages, collect_images, open_images, record
from clipforge.eval.neurons.report import Shown, UnitPanel, render_html, unit_grid, write_report
from clipforge.eval.neurons.score import UnitScore, find_multimodal, majority, score_units, unit_score
from clipforge.eval.neurons.vocab import (
    load_vocabulary,
    render_words,
    synthetic_words,
    text_activations,
    word_activations,
    zeroshot_labeller,
)

__all__ = [
    "QUANTILES",
    "FeatureVisualisation",
    "FourierImage",
    "Layer",
    "NeuronsResult",
    "Recording",
    "Shown",
    "SyntheticImages",
    "UnitPanel",
    "UnitScore",
    "analyse",
    "check_units",
    "collect_images",
    "find_multimodal",
    "get_layer",
    "layer_activations",
    "list_layers",
    "load_vocabulary",
    "majority",
    "open_images",
    "record",
    "render_html",
    "render_words",
    "score_units",
    "synthetic_words",
    "text_activations",
    "unit_grid",
    "unit_score",
    "visualise",
    "word_activations",
    "write",
    "write_report",
    "zeroshot_labeller",
]
