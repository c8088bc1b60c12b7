"""Reading and writing model checkpoints: clipforge's own format and converters for foreign ones.

Formats (``FORMATS``) and where each lives:

- ``clipforge``: a directory with ``model.safetensors`` + ``config.json`` (``native.py``).
- ``openai``: OpenAI's released ``.pt`` TorchScript archives, read without running them (``openai.py``).
- ``open_clip``: ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` / training ``.pt`` files,
  or a hub-style directory holding them (``open_clip.py``).
- ``hf``: a ``transformers`` model directory, by its ``config.json``'s ``model_type``: ``clip`` (``CLIPModel``,
  ``hf.py``), ``siglip`` (``SiglipModel``: SigLIP, SigLIP 2 at fixed resolution; ``hf_siglip.py``) or ``siglip2``
  (``Siglip2Model``: SigLIP 2 NaFlex; ``hf_siglip2.py``).
- ``big_vision``: a CLIPPO ``.npz`` (``big_vision.py``).

Nothing is unpickled unless the caller passes ``allow_pickle=True`` (and then only tensors are rebuilt);
TorchScript code runs only with ``allow_jit=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from clipforge.checkpoints.native import CheckpointError
from clipforge.text import build_text_processor, saved_vocabulary

if TYPE_CHECKING:
    from clipforge.models.clip import CLIP
    from clipforge.models.clippo import CLIPPO
    from clipforge.models.config import ModelConfig

FORMATS = ("clipforge", "openai", "open_clip", "hf", "big_vision")
EXPORT_FORMATS = ("clipforge", "hf", "open_clip", "big_vision")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

__all__ = ["EXPORT_FORMATS", "FORMATS", "CheckpointError", "convert", "detect_format", "load_any"]


def detect_format(path: str | Path) -> str:
    """Names the checkpoint format at ``path``, or raises a clear error listing the known formats.

    Detection reads directory listings, JSON configs, zip listings and safetensors headers only; a pickled
    file is recognised by its suffix (``.bin``/``.pt``/``.pth``/``.ckpt``, read as ``open_clip``, which also
    covers OpenAI's plain state dicts) without being opened.
    """
    from clipforge.checkpoints.big_vision import is_big_vision_npz
    from clipforge.checkpoints.hf import HF_MODEL_TYPES, hf_model_type
    from clipforge.checkpoints.native import check_native_dir, is_native_dir
    from clipforge.checkpoints.open_clip import PICKLE_NAME, SAFETENSORS_NAME
    from clipforge.checkpoints.openai import is_torchscript

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        if is_native_dir(path):
            return "clipforge"
        model_type = hf_model_type(path)
        if model_type in HF_MODEL_TYPES:
            return "hf"
        if (path / SAFETENSORS_NAME).is_file() or (path / PICKLE_NAME).is_file():
            return "open_clip"
        if model_type is not None:
            raise _unsupported_hf(path, model_type)
        check_native_dir(path)  # a damaged clipforge directory: say what is wrong with it
    elif is_big_vision_npz(path) or path.suffix == ".npz":  # a damaged .npz gets the reader's precise error
        return "big_vision"
    elif is_torchscript(path):
        return "openai"
    elif path.suffix == ".safetensors":
        keys = {k.removeprefix("module.") for k in _safetensors_keys(path)}
        if "token_embedding.weight" in keys:
            return "open_clip"
        if "text.token_embedding.weight" in keys or any(k.startswith("visual.trunk.") for k in keys):
            return "open_clip"  # OpenCLIP's custom-text models: SigLIP, a timm image tower under visual.trunk
    elif path.suffix in PICKLE_SUFFIXES:
        return "open_clip"
    raise CheckpointError(f"{path}: unknown checkpoint format; known formats: {', '.join(FORMATS)} "
                          "(name one with fmt=... / --from)")


def _unsupported_hf(path: Path, model_type: str) -> CheckpointError:
    from clipforge.checkpoints.hf import HF_MODEL_TYPES

    return CheckpointError(f"{path / 'config.json'}: HF model_type {model_type!r} is not one clipforge reads; it "
                           f"reads {', '.join(HF_MODEL_TYPES)}")


def _load_hf(path: str | Path, allow_pickle: bool) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, clipforge state dict) of an HF directory, read by the converter of its ``model_type``."""
    from clipforge.checkpoints.hf import hf_model_type

    model_type = hf_model_type(path)
    if model_type == "clip":
        from clipforge.checkpoints.hf import load_hf

        return load_hf(path, allow_pickle=allow_pickle)
    if model_type == "siglip":
        from clipforge.checkpoints.hf_siglip import load_hf_siglip

        return load_hf_siglip(path, allow_pickle=allow_pickle)
    if model_type == "siglip2":
        from clipforge.checkpoints.hf_siglip2 import load_hf_siglip2

        return cast("tuple[ModelConfig, dict[str, torch.Tensor]]", load_hf_siglip2(path, allow_pickle=allow_pickle))
    if model_type is None:
        raise CheckpointError(f"{path}: not an HF model directory (needs a config.json with a model_type)")
    raise _unsupported_hf(Path(path), model_type)


def _save_hf(model: CLIP | CLIPPO, dst: str | Path, src: str | Path) -> Path:
    """Writes the HF directory of the model's family: ``CLIPModel``, ``SiglipModel``, or ``Siglip2Model`` (NaFlex)."""
    if model.config.family != "siglip":
        from clipforge.checkpoints.hf import save_hf

        return save_hf(model, dst, build_text_processor(model.config, src))
    try:
        processor = build_text_processor(model.config, src if Path(src).is_dir() else None)
    except FileNotFoundError:  # no SentencePiece file beside the source: the model is written without tokenizer
        processor = None
    if getattr(model.config.vision, "naflex", False):  # SigLIP 2 NaFlex: HF's Siglip2Model
        from clipforge.checkpoints.hf_siglip2 import save_hf_siglip2

        return cast(Path, save_hf_siglip2(model, dst, processor))
    from clipforge.checkpoints.hf_siglip import save_hf_siglip

    return save_hf_siglip(model, dst, processor)


def _safetensors_keys(path: Path) -> set[str]:
    """The tensor names a safetensors header declares, every declaration checked (``containers``)."""
    from clipforge.checkpoints.containers import safetensors_header

    try:
        return set(safetensors_header(path)[0])
    except OSError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_any(path: str | Path, device: torch.device | str | None = None, precision: str = "fp32",
             fmt: str | None = None, allow_pickle: bool = False, allow_jit: bool = False,
             act: str | None = None) -> CLIP | CLIPPO:
    """Loads a model from any supported checkpoint format (detected unless ``fmt`` is given).

    Args:
        path: A file or directory in one of ``FORMATS``.
        device: Where to put the model.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        fmt: The format, when detection should be skipped.
        allow_pickle: Allow reading pickled files (``torch.load(weights_only=True)``).
        allow_jit: Read TorchScript archives with ``torch.jit.load``, which runs their code.
        act: The MLP activation of an ``openai`` or ``open_clip`` checkpoint (their files do not record it;
            OpenAI's default is ``quick_gelu``; open_clip's is read from ``open_clip_config.json`` or guessed).
    """
    from clipforge.checkpoints.native import load_model, model_from_state_dict

    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if fmt == "clipforge":
        return load_model(path, device, precision)
    config: ModelConfig
    if fmt == "big_vision":
        from clipforge.checkpoints.big_vision import load_big_vision

        config, state = load_big_vision(path)
    elif fmt == "openai":
        from clipforge.checkpoints.openai import load_openai

        config, state = load_openai(path, allow_pickle=allow_pickle, allow_jit=allow_jit, act=act or "quick_gelu")
    elif fmt == "open_clip":
        from clipforge.checkpoints.open_clip import load_open_clip

        config, state = load_open_clip(path, allow_pickle=allow_pickle, act=act)
    else:
        config, state = _load_hf(path, allow_pickle)
    return model_from_state_dict(config, state, str(path), device, precision)


def convert(src: str | Path, dst: str | Path, to: str = "clipforge", src_format: str | None = None,
            allow_pickle: bool = False, allow_jit: bool = False, act: str | None = None) -> Path:
    """Converts a checkpoint between formats (through a clipforge model, in fp32).

    Args:
        src: The checkpoint to read (any of ``FORMATS``), or released weights by name (``hf-hub:org/repo``,
            ``NAME:TAG``), read from the Hugging Face cache.
        dst: Where to write: a directory for ``clipforge`` and ``hf``; for ``open_clip`` a ``.safetensors`` /
            ``.bin`` file or a directory (``open_clip_model.safetensors`` + ``open_clip_config.json``); an
            ``.npz`` file for ``big_vision``.
        to: The output format, one of ``EXPORT_FORMATS``.
        src_format: The input format, when detection should be skipped.
        allow_pickle: Allow reading pickled input files.
        allow_jit: Read TorchScript input with ``torch.jit.load`` (runs its code).
        act: The activation of an ``openai``/``open_clip`` input (see ``load_any``).

    Returns:
        The path written.
    """
    if to not in EXPORT_FORMATS:
        raise CheckpointError(f"unknown output format {to!r}; known formats: {', '.join(EXPORT_FORMATS)}")
    from clipforge.checkpoints.hub import released_source

    released = released_source(src, allow_pickle)
    if released is not None:  # hf-hub:org/repo or NAME:TAG: its snapshot in the Hugging Face cache
        src, named_act = released
        act = act or named_act
    model = load_any(src, fmt=src_format, allow_pickle=allow_pickle, allow_jit=allow_jit, act=act)
    if to == "clipforge":
        from clipforge.checkpoints.native import save_pretrained

        own = saved_vocabulary(src) or _saved_sentencepiece(model.config, src)  # keep a source's own vocabulary
        return save_pretrained(model, dst, build_text_processor(model.config, src) if own else None)
    if to == "hf":
        return _save_hf(model, dst, src)
    if to == "open_clip":
        from clipforge.checkpoints.open_clip import save_open_clip

        return save_open_clip(model, dst)
    from clipforge.checkpoints.big_vision import save_big_vision

    save_big_vision(model, dst)
    return Path(dst)


def _saved_sentencepiece(config: ModelConfig, src: str | Path) -> Path | None:
    """The SentencePiece model file a SigLIP source directory carries (``spiece.model``/``tokenizer.model``)."""
    if config.family != "siglip" or config.tokenizer.get("kind") != "sentencepiece":
        return None
    from clipforge.text.sentencepiece import saved_sentencepiece

    return saved_sentencepiece(src)
