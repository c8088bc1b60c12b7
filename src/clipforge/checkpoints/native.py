"""clipforge's own model format: a directory with ``model.safetensors`` and ``config.json``.

``config.json`` holds the full model config (``to_dict``) and a format version; loading validates it
strictly and never unpickles anything. A text processor that carries its own vocabulary (a custom BPE)
writes it beside them, so the directory is self-contained.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipforge.config import ConfigError, read_config_text, shorten, to_dict
from clipforge.models.config import ModelConfig, model_config_from_dict
from clipforge.models.factory import build_model
from clipforge.models.size import check_model_size
from clipforge.text import TextProcessor, check_text_config

if TYPE_CHECKING:
    from clipforge.models.clip import CLIP
    from clipforge.models.clippo import CLIPPO

FORMAT_VERSION = 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or its tensors do not fit the model they should build."""


def is_native_dir(path: str | Path) -> bool:
    """Whether ``path`` is a clipforge model directory (an HF directory has the same file names, not our config)."""
    path = Path(path)
    if not ((path / WEIGHTS).is_file() and (path / CONFIG).is_file()):
        return False
    try:
        data = json.loads(read_config_text(path / CONFIG))
    except (ValueError, RecursionError, OSError):  # ConfigError (too large, not UTF-8) is a ValueError
        return False
    return isinstance(data, dict) and "clipforge_format" in data


def check_native_dir(path: str | Path) -> None:
    """Raises a clear error when ``path`` holds a ``config.json`` that is damaged or clipforge's without weights.

    Used by format detection before it gives up, so a damaged model directory is reported as what it is
    rather than as an unknown format. Returns silently when nothing points at a clipforge directory.

    Raises:
        CheckpointError: ``config.json`` is not valid JSON.
        FileNotFoundError: ``config.json`` is clipforge's but ``model.safetensors`` is missing.
    """
    config = Path(path) / CONFIG
    if not config.is_file():
        return
    try:
        data = json.loads(read_config_text(config))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{config}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(data, dict) and "clipforge_format" in data and not (Path(path) / WEIGHTS).is_file():
        raise FileNotFoundError(f"{Path(path) / WEIGHTS}: no weights file beside the clipforge config")


def save_pretrained(model: torch.nn.Module, directory: str | Path, text_processor: TextProcessor | None = None
                    ) -> Path:
    """Writes ``model`` (and a processor's own vocabulary, if any) as a model directory; files replaced atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(directory / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config = {"clipforge_format": FORMAT_VERSION, "model": to_dict(model.config)}
    _atomic(directory / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    if text_processor is not None:
        text_processor.save_pretrained(directory)
    return directory


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_model_config(directory: str | Path) -> ModelConfig:
    """Reads and validates ``config.json`` of a model directory."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model config (is {directory} a clipforge model directory?)")
    try:
        data = json.loads(read_config_text(path))
    except ConfigError:
        raise
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{path}: expected an object with a 'model' config")
    version = data.get("clipforge_format", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(f"{path}: clipforge_format: expected an integer, got {shorten(version)}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: written by a newer clipforge (format {version})")
    try:
        config = model_config_from_dict(data["model"], "model")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    try:
        check_text_config(config)  # the text processor's fields (the renderer's) are checked now, not at first use
    except ConfigError as e:
        raise ConfigError(f"{path}: model.{e}") from None
    return config


def load_state_dict_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` strictly, naming the missing/unexpected key or the shape mismatch and the source."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing {len(missing)} tensor(s), first {missing[0]!r}")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected {len(unexpected)} tensor(s), first {unexpected[0]!r}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{source}: {key!r} has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(expected[key].shape)}")
    model.load_state_dict(state)


def load_model(directory: str | Path, device: torch.device | str | None = None,
               precision: str = "fp32") -> CLIP | CLIPPO:
    """Builds the model a directory describes and loads its weights (no pickle involved).

    Args:
        directory: A model directory written by ``save_pretrained``.
        device: Where to put the model.
        precision: ``fp32``, ``bf16`` or ``fp16``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    config = read_model_config(directory)
    weights = Path(directory) / WEIGHTS
    check_model_size(config, where=str(Path(directory) / CONFIG))  # before any weights are read
    return model_from_state_dict(config, read_safetensors(weights), str(weights), device, precision)


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, its header checked first (``containers.safetensors_header``).

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: The file is not readable safetensors (truncated, corrupt, a header that lies about its
            tensors: duplicate keys, offsets outside the data, sizes that do not match the shapes), naming it.
    """
    from clipforge.checkpoints.containers import safetensors_header

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights file")
    safetensors_header(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def model_from_state_dict(config: ModelConfig, state: dict[str, torch.Tensor], source: str,
                          device: torch.device | str | None = None, precision: str = "fp32") -> CLIP | CLIPPO:
    """Builds the model ``config`` describes and fills it with ``state`` (clipforge names), checked strictly.

    The model is built on the meta device, so no time goes into a random initialisation that is overwritten.

    Args:
        config: The model config.
        state: Tensors under clipforge's names.
        source: The file they came from, named in errors.
        device: Where to put the model.
        precision: ``fp32``, ``bf16`` or ``fp16``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    check_model_size(config, where=source)  # the meta build below skips it; ``to_empty`` then allocates
    with torch.device("meta"):
        model = build_model(config)
    model = model.to_empty(device="cpu")
    load_state_dict_into(model, state, source)
    _restore_buffers(model)
    return model.to(device=device, dtype=PRECISIONS[precision]).eval()


def _restore_buffers(model: CLIP | CLIPPO) -> None:
    """Recomputes non-persistent buffers (not saved) that ``to_empty`` left uninitialised."""
    if hasattr(model, "mean") and hasattr(model.config, "mean"):
        mean, std = cast(torch.Tensor, model.mean), cast(torch.Tensor, model.std)  # CLIPPO's normalisation buffers
        mean.copy_(torch.tensor(model.config.mean).view(1, 3, 1, 1))
        std.copy_(torch.tensor(model.config.std).view(1, 3, 1, 1))
