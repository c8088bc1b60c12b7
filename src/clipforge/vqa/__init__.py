"""VQA by rendering (CLIPPO, Tschannen et al. 2022, §4.4): a CLIPPO model answers a question about an image
from one canvas, the question rendered in a band above the image, through a classifier head.

One module per concept:

- ``compose``: ``QuestionImageComposer``, the model's input (question band on top, image below).
- ``data``: ``SyntheticVQA``, questions about the synthetic world's scenes, with held-out combinations.
- ``model``: ``VQA``, a CLIPPO backbone and a ``VQAHead``.
- ``checkpoint``: ``save_vqa`` / ``load_vqa``, a VQA model as a directory; ``saved_inputs`` rebuilds its input.
- ``train``: ``VQATrainConfig``, ``load_vqa_config``, ``prepare_vqa`` and the recipe ``train_vqa``.
- ``evaluate``: ``predict``, accuracy per question type (``evaluate_vqa``, ``evaluate_splits``) and its plot.
- ``cli``: the ``clipforge vqa train|eval|ask`` verbs.

::

    from clipforge.vqa import load_vqa, load_vqa_config, predict, saved_inputs, train_vqa

    result = train_vqa(load_vqa_config("configs/vqa_tiny.yaml", {"steps": 200}))
    model, inputs = load_vqa(result.model_dir)
    compose, _ = saved_inputs(model, inputs)      # the renderer and band the model was trained with
    probs = predict(model, compose([image], ["how many stars are there?"]))   # (1, n_answers)
"""

from __future__ import annotations

from clipforge.vqa.checkpoint import VQAInput, load_vqa, read_vqa_config, save_vqa, saved_inputs
from clipforge.vqa.compose import QuestionImageComposer, band_height
from clipforge.vqa.data import (
    ANSWERS,
    QUESTION_TYPES,
    Question,
    SyntheticVQA,
    VQADataConfig,
    VQADataset,
    VQAExample,
    question_text,
)
from clipforge.vqa.evaluate import evaluate_splits, evaluate_vqa, plot_accuracy, predict
from clipforge.vqa.model import VQA, VQAHead, VQAHeadConfig
from clipforge.vqa.train import (
    PreparedVQA,
    VQAOptimConfig,
    VQAResult,
    VQAScheduleConfig,
    VQATrainConfig,
    load_vqa_config,
    prepare_vqa,
    train_vqa,
)

__all__ = [
    "ANSWERS",
    "QUESTION_TYPES",
    "VQA",
    "PreparedVQA",
    "Question",
    "QuestionImageComposer",
    "SyntheticVQA",
    "VQADataConfig",
    "VQADataset",
    "VQAExample",
    "VQAHead",
    "VQAHeadConfig",
    "VQAInput",
    "VQAOptimConfig",
    "VQAResult",
    "VQAScheduleConfig",
    "VQATrainConfig",
    "band_height",
    "evaluate_splits",
    "evaluate_vqa",
    "load_vqa",
    "load_vqa_config",
    "plot_accuracy",
    "predict",
    "prepare_vqa",
    "question_text",
    "read_vqa_config",
    "save_vqa",
    "saved_inputs",
    "train_vqa",
]
