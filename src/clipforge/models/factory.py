"""Creating models from presets or configs."""

from __future__ import annotations

from typing import Any

import torch

from clipforge.models.clip import CLIP
from clipforge.models.config import CLIPConfig, from_dict, replace
from clipforge.models.presets import preset_config


def build_config(name_or_config: str | CLIPConfig | dict[str, Any], **overrides: Any) -> CLIPConfig:
    """Resolves a preset name, a mapping or a config, with dotted overrides, into a validated config.

    Args:
        name_or_config: A preset name (see ``list_models()``), a config mapping, or a ``CLIPConfig``.
        **overrides: Field overrides, nested with dicts or double underscores is not supported: use
            dotted keys via ``**{"vision.width": 256}`` or nested mappings ``vision={"width": 256}``.
    """
    if isinstance(name_or_config, str):
        config = from_dict(CLIPConfig, preset_config(name_or_config), name_or_config)
    elif isinstance(name_or_config, dict):
        config = from_dict(CLIPConfig, name_or_config)
    else:
        config = name_or_config
    return replace(config, overrides) if overrides else config


def build_model(config: CLIPConfig, device: torch.device | str | None = None) -> CLIP:
    """Instantiates the model family named by ``config.family`` with fresh (OpenAI-style) weights."""
    families = {"clip": CLIP}
    model = families[config.family](config)
    return model.to(device) if device is not None else model
