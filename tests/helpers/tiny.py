"""The tiny ViT CLIP that training tests build from the ``tiny-vit`` preset: dotted ``model_overrides`` for
``load_config`` / ``parse_overrides`` (32-px images in 8-px patches, a 16-token context, one block per tower unless
asked)."""

from __future__ import annotations


def tiny_vit_overrides(width: int = 32, vision_layers: int = 1, text_layers: int = 1,
                       context_length: int = 16) -> list[str]:
    """``model_overrides.*`` items for a ViT CLIP of ``width`` (also its embedding width) with two heads a block."""
    return [f"model_overrides.embed_dim={width}", "model_overrides.vision.image_size=32",
            "model_overrides.vision.patch_size=8", f"model_overrides.vision.width={width}",
            f"model_overrides.vision.layers={vision_layers}", "model_overrides.vision.heads=2",
            f"model_overrides.text.width={width}", "model_overrides.text.heads=2",
            f"model_overrides.text.layers={text_layers}", f"model_overrides.text.context_length={context_length}"]
