"""Creating models from presets or configs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from clipforge.config import replace
from clipforge.models.clip import CLIP
from clipforge.models.clippo import CLIPPO
from clipforge.models.config import ModelConfig, model_config_from_dict
from clipforge.models.presets import preset_config
from clipforge.models.siglip import SigLIP
from clipforge.models.size import check_model_size

# Each family's class takes that family's config, a pairing the type of a dict cannot express.
MODEL_CLASSES: dict[str, Callable[..., CLIP | CLIPPO]] = {"clip": CLIP, "clippo": CLIPPO, "siglip": SigLIP}


def build_config(name_or_config: str | ModelConfig | dict[str, Any], **overrides: Any) -> ModelConfig:
    """Resolves a preset name, a mapping or a config, with overrides, into a validated config.

    Args:
        name_or_config: A preset name (see ``list_models()``), a config mapping, or a model config.
        **overrides: Field overrides: nested mappings (``vision={"width": 256}``) or dotted keys
            (``**{"vision.width": 256}``).
    """
    if isinstance(name_or_config, str):
        config = model_config_from_dict(preset_config(name_or_config), name_or_config)
    elif isinstance(name_or_config, dict):
        config = model_config_from_dict(name_or_config)
    else:
        config = name_or_config
    return replace(config, overrides) if overrides else config


def build_model(config: ModelConfig, device: torch.device | str | None = None, max_params: int | None = None,
                max_activation_bytes: int | None = None) -> CLIP | CLIPPO:
    """Instantiates the model family named by ``config.family`` with fresh (OpenAI-style) weights.

    The config's cost is checked first (``clipforge.models.size``): a model over the parameter or per-sample
    activation limit is refused before anything is allocated, unless it is built on the meta device (``device``,
    or ``with torch.device("meta")``), which allocates nothing.

    Args:
        config: The model config.
        device: Where to put the model.
        max_params: The parameter limit (default: ``CLIPFORGE_MAX_PARAMS``, else 10 billion).
        max_activation_bytes: The per-sample activation limit (default: ``CLIPFORGE_MAX_ACTIVATION_BYTES``, else
            4 GiB).

    Raises:
        ConfigError: the model would exceed a limit (naming the fields that dominate the estimate).
    """
    target = torch.device(device) if device is not None else torch.get_default_device()
    if target.type != "meta":
        check_model_size(config, max_params, max_activation_bytes)
    model = MODEL_CLASSES[config.family](config)
    return model.to(device) if device is not None else model
