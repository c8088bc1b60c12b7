"""Reading and writing model checkpoints: clipforge's own format and converters for foreign ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FORMATS = ("clipforge", "big_vision")


def detect_format(path: str | Path) -> str:
    """Names the checkpoint format at ``path``, or raises a clear error listing the known formats."""
    from clipforge.checkpoints.big_vision import is_big_vision_npz
    from clipforge.checkpoints.native import is_native_dir

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if is_native_dir(path):
        return "clipforge"
    if path.is_file() and is_big_vision_npz(path):
        return "big_vision"
    raise ValueError(f"{path}: unknown checkpoint format; known formats: {', '.join(FORMATS)}")


def load_any(path: str | Path, device: torch.device | str | None = None, precision: str = "fp32",
             fmt: str | None = None, **kwargs: Any) -> torch.nn.Module:
    """Loads a model from any supported checkpoint format (detected unless ``fmt`` is given)."""
    from clipforge.checkpoints.native import PRECISIONS, load_model, load_state_dict_into

    fmt = fmt or detect_format(path)
    if fmt == "clipforge":
        return load_model(path, device, precision)
    if fmt == "big_vision":
        from clipforge.checkpoints.big_vision import load_big_vision
        from clipforge.models.factory import build_model

        config, state = load_big_vision(path)
        model = build_model(config)
        load_state_dict_into(model, state, str(path))
        return model.to(device=device, dtype=PRECISIONS[precision])
    raise ValueError(f"unknown checkpoint format {fmt!r}; known formats: {', '.join(FORMATS)}")
