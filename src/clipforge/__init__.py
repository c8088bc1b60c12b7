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

The names are resolved on first use (PEP 562), so importing a torch-free part of the package, such as the ONNX
runtime ``clipforge.deploy``, does not import torch; ``import clipforge`` alone imports nothing heavy.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "CLIP": "clipforge.models.clip",
    "CLIPOutput": "clipforge.models.clip",
    "CLIPPO": "clipforge.models.clippo",
    "CLIPConfig": "clipforge.models.config",
    "CLIPPOConfig": "clipforge.models.config",
    "ModelConfig": "clipforge.models.config",
    "ResNetConfig": "clipforge.models.config",
    "TextConfig": "clipforge.models.config",
    "ViTConfig": "clipforge.models.config",
    "ConfigError": "clipforge.config",
    "TextProcessor": "clipforge.text",
    "create_model": "clipforge.api",
    "create_model_and_transforms": "clipforge.api",
    "get_text_processor": "clipforge.api",
    "get_tokenizer": "clipforge.api",
    "list_models": "clipforge.api",
    "list_pretrained": "clipforge.api",
    "load": "clipforge.api",
}

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

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports these on first use
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
    from clipforge.models.config import CLIPConfig, CLIPPOConfig, ModelConfig, ResNetConfig, TextConfig, ViTConfig
    from clipforge.text import TextProcessor


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first access (then cached here); a subpackage such as
    ``clipforge.transforms`` is imported on first access too, as the eager package used to provide it."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
