"""The functions behind the public API (``clipforge.create_model`` …): each composes the model, transform,
text-processor and checkpoint packages. ``clipforge/__init__.py`` re-exports them; code inside clipforge
imports them from here, never from the top-level package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipforge.models.clip import CLIP
from clipforge.models.clippo import CLIPPO
from clipforge.models.config import ModelConfig
from clipforge.models.factory import build_config, build_model
from clipforge.models.presets import list_presets
from clipforge.text import TextProcessor, build_text_processor
from clipforge.transforms import EvalTransform, TrainTransform, model_transforms


def list_models() -> list[str]:
    """Names of every registered model preset."""
    return list_presets()


def create_model(name: str | ModelConfig | dict[str, Any], device: torch.device | str | None = None,
                 **overrides: Any) -> CLIP | CLIPPO:
    """Builds a randomly initialised model from a preset name or config.

    Args:
        name: A preset name (``list_models()``), a config mapping, or a config.
        device: Where to put the model.
        **overrides: Config fields to change, e.g. ``embed_dim=256`` or ``vision={"layers": 6}``; an
            unknown or misspelled field is an error naming it.

    Raises:
        ConfigError: a bad field, or a model beyond the size limits, checked before anything is allocated
            (``clipforge.models.size``: 10 billion parameters, 4 GiB of activations per sample; raised with
            ``CLIPFORGE_MAX_PARAMS`` / ``CLIPFORGE_MAX_ACTIVATION_BYTES``; not applied on the meta device).
    """
    return build_model(build_config(name, **overrides), device)


def create_model_and_transforms(name: str | ModelConfig | dict[str, Any], device: torch.device | str | None = None,
                                **overrides: Any) -> tuple[CLIP | CLIPPO, TrainTransform, EvalTransform]:
    """Builds a model and its (train, eval) image transforms."""
    model = create_model(name, device, **overrides)
    return (model, *model_transforms(model.config))


def get_text_processor(model_or_config: torch.nn.Module | ModelConfig, directory: str | Path | None = None
                       ) -> TextProcessor:
    """The callable that turns strings into the model's text input (``processor(texts) -> Tensor``).

    CLIP models get the byte-level BPE tokenizer (with the vocabulary saved in ``directory`` when there
    is one, else OpenAI's); CLIPPO models get the Unifont renderer their config names. The choice is
    carried by the model's config, so callers never branch on the model family.
    """
    config = model_or_config.config if isinstance(model_or_config, torch.nn.Module) else model_or_config
    return build_text_processor(config, directory)


def load(path: str | Path, device: torch.device | str | None = None, precision: str = "fp32",
         **kwargs: Any) -> tuple[CLIP | CLIPPO, EvalTransform, TextProcessor]:
    """Loads a saved model directory (or a foreign checkpoint) with its eval transform and text processor.

    Args:
        path: A clipforge model directory, or an OpenAI / open_clip / HF checkpoint (converted on the fly).
        device: Where to put the model.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        **kwargs: Passed to the checkpoint reader (e.g. ``allow_pickle=True`` for pickled files).
    """
    from clipforge.checkpoints import load_any  # the converters load lazily: importing clipforge stays quick

    model = load_any(path, device=device, precision=precision, **kwargs)
    model.eval()
    _, eval_tf = model_transforms(model.config)
    return model, eval_tf, get_text_processor(model, path if Path(path).is_dir() else None)
