"""clipforge: CLIP-family models (CLIP, CLIPPO) to train, fine-tune, evaluate, embed and search.

The public API::

    import clipforge
    clipforge.list_models()
    model, train_tf, eval_tf = clipforge.create_model_and_transforms("ViT-B/32")
    tokenizer = clipforge.get_text_processor(model)
    model, eval_tf, tokenizer = clipforge.load("path/to/model_dir")
"""

from __future__ import annotations

from clipforge.api import create_model, create_model_and_transforms, get_text_processor, list_models, load
from clipforge.config import ConfigError
from clipforge.models.clip import CLIP, CLIPOutput
from clipforge.models.clippo import CLIPPO
from clipforge.models.config import (
    CLIPConfig,
    CLIPPOConfig,
    ModelConfig,
    ResNetConfig,
    TextConfig,
    ViTConfig,
)
from clipforge.text import TextProcessor

__version__ = "0.1.0"

__all__ = [
    "CLIP",
    "CLIPPO",
    "CLIPConfig",
    "CLIPOutput",
    "CLIPPOConfig",
    "ConfigError",
    "ModelConfig",
    "ResNetConfig",
    "TextConfig",
    "TextProcessor",
    "ViTConfig",
    "create_model",
    "create_model_and_transforms",
    "get_text_processor",
    "list_models",
    "load",
]
