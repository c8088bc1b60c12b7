"""A fine-tuned VQA model as a directory: the CLIPPO backbone in clipforge's format, plus the head.

::

    model.safetensors, config.json     the fine-tuned backbone: ``clipforge.load`` reads it as a CLIPPO model
    vqa_head.safetensors               the classifier head
    vqa.json                           {"clipforge_vqa": 1, "head": {answers, hidden, dropout}, "band": 48,
                                        "data": {...}}

``band`` is the question band's height the model was trained with; ``saved_inputs`` rebuilds the composer
from it and from the backbone's own renderer, so the model is always fed the layout it was trained on.
``data`` is the training data's config, kept as a plain mapping (for evaluating on the same world).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from clipforge.checkpoints.native import (
    CheckpointError,
    load_model,
    load_state_dict_into,
    read_safetensors,
    save_pretrained,
)
from clipforge.config import ConfigError, from_dict, to_dict
from clipforge.text import build_text_processor
from clipforge.vqa.compose import QuestionImageComposer
from clipforge.vqa.data import VQADataConfig
from clipforge.vqa.model import VQA, VQAHeadConfig

VQA_FORMAT = 1
HEAD_WEIGHTS, VQA_CONFIG = "vqa_head.safetensors", "vqa.json"


@dataclass(frozen=True)
class VQAInput:
    """How a saved VQA model's input was built.

    Attributes:
        band: Height of the question band in pixels.
        data: The training data's config as a plain mapping (empty when not recorded).
    """

    band: int
    data: dict[str, Any] = field(default_factory=dict)


def save_vqa(model: VQA, directory: str | Path, inputs: VQAInput) -> Path:
    """Writes ``model`` (backbone, head, answers) and how its input is built into ``directory``."""
    directory = save_pretrained(model.backbone, directory)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()},
              str(directory / HEAD_WEIGHTS), metadata={"format": "pt"})
    record = {"clipforge_vqa": VQA_FORMAT, "head": to_dict(model.config), **to_dict(inputs)}
    (directory / VQA_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    return directory


def read_vqa_config(directory: str | Path) -> tuple[VQAHeadConfig, VQAInput]:
    """The head config and input description of a VQA directory, validated.

    Raises:
        FileNotFoundError: ``vqa.json`` is missing (not a VQA model directory).
        ConfigError: ``vqa.json`` is not valid JSON or a field is wrong (the message names the file).
    """
    path = Path(directory) / VQA_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no VQA config (is {directory} a model saved by `clipforge vqa train`?)")
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("head"), dict):
        raise ConfigError(f"{path}: expected an object with a 'head' config")
    if data.get("clipforge_vqa") != VQA_FORMAT:
        raise ConfigError(f"{path}: clipforge_vqa: expected {VQA_FORMAT}, got {data.get('clipforge_vqa')!r}")
    inputs = {k: data[k] for k in ("band", "data") if k in data}
    try:
        return from_dict(VQAHeadConfig, data["head"], "head"), from_dict(VQAInput, inputs, "vqa")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_vqa(directory: str | Path, device: torch.device | str | None = None) -> tuple[VQA, VQAInput]:
    """Loads a VQA directory written by ``save_vqa`` → (model in eval mode, how its input is built).

    Raises:
        FileNotFoundError: A file is missing (named).
        ConfigError: A config field is wrong (the file and field are named).
        CheckpointError: A weights file is unreadable or does not fit the config.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model directory")
    head_config, inputs = read_vqa_config(directory)
    backbone = load_model(directory)
    if backbone.config.family != "clippo":
        raise CheckpointError(f"{directory}: the backbone is a {backbone.config.family} model; VQA needs CLIPPO")
    model = VQA(backbone, head_config)
    weights = directory / HEAD_WEIGHTS
    load_state_dict_into(model.head, read_safetensors(weights), str(weights))
    return model.to(device).eval(), inputs


def saved_inputs(model: VQA, inputs: VQAInput) -> tuple[QuestionImageComposer, VQADataConfig]:
    """The composer and data config a saved VQA model was trained with (``load_vqa``'s second value).

    Raises:
        ConfigError: The recorded data config is invalid.
        ValueError: The recorded band does not fit the model's canvas.
    """
    composer = QuestionImageComposer(build_text_processor(model.backbone.config), inputs.band)
    try:
        data = from_dict(VQADataConfig, inputs.data, "vqa.data")
    except ConfigError as e:
        raise ConfigError(f"vqa.json: {e}") from None
    return composer, data
