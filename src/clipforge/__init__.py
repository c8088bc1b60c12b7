"""clipforge: CLIP-family models (CLIP, CLIPPO) to train, fine-tune, evaluate, embed and search.

The public API::

    import clipforge
    clipforge.list_models()
    model, train_tf, eval_tf = clipforge.create_model_and_transforms("ViT-B/32")
    tokenizer = clipforge.get_text_processor(model)
    model, eval_tf, tokenizer = clipforge.load("path/to/model_dir")

Released weights by the names OpenCLIP users know (from the Hugging Face Hub cache)::

    model, train_tf, eval_tf = clipforge.create_model_and_transforms("ViT-B-32", pretrained="laion2b_s34b_b79k")
    tokenizer = clipforge.get_tokenizer("ViT-B-32")
    model, eval_tf, tokenizer = clipforge.load("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    clipforge.list_pretrained()
"""

from __future__ import annotations

from clipforge.api import (
    create_model,
    create_model_and_transforms,
    get_text_processor,
    get_tokenizer,
    list_models,
    list_pretrained,
    load,
)
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
    "get_tokenizer",
    "list_models",
    "list_pretrained",
    "load",
]
