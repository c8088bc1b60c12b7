"""LoRA adapter sets on disk, and what a LoRA run writes at its end.

An adapter set is a folder of two files: ``adapters.safetensors`` (only the ``lora_A`` / ``lora_B`` tensors, a
few MB) and ``adapter_config.json`` (the ``LoRAConfig`` and the base model's fingerprint,
``clipforge.eval.adapter.model_fingerprint``, so the adapters are never loaded onto another base by mistake).
The model surgery itself (``apply_lora``, ``merge_lora``) is ``clipforge.models.lora``; this module sits in
``train/`` because the fingerprint comes from ``eval/``, which ``models/`` does not import.

    model = clipforge.load("runs/quickstart/final")[0]
    load_adapters(model, "runs/finetune_lora/final/adapters")   # applies the saved LoRAConfig, then the tensors
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipforge.config import ConfigError, from_dict, to_dict
from clipforge.eval.adapter import model_fingerprint
from clipforge.models.lora import LoRAConfig, apply_lora, lora_config, lora_removed, lora_state_dict, merge_lora

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = 1


class AdapterError(ValueError):
    """An adapter set does not fit the model it is loaded into, or is not a readable adapter set."""


def base_fingerprint(model: nn.Module) -> str:
    """The fingerprint of ``model`` without its adapters: the base model's, the same before and after LoRA
    training (the base weights are frozen)."""
    with lora_removed(model):
        return model_fingerprint(model)


def save_adapters(model: nn.Module, directory: str | Path) -> Path:
    """Writes ``model``'s adapters (only them) and their config to ``directory``; returns the directory.

    Raises:
        ValueError: ``model`` has no adapters.
    """
    config = lora_config(model)
    if config is None:
        raise ValueError("save_adapters: the model has no LoRA adapters (apply_lora first)")
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in lora_state_dict(model).items()}
    save_file(tensors, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    meta = {"clipforge_adapter_format": ADAPTER_FORMAT, "kind": "lora", "base_fingerprint": base_fingerprint(model),
            "base_class": type(model).__name__, "lora": to_dict(config)}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_adapter_config(directory: str | Path) -> tuple[LoRAConfig, dict[str, Any]]:
    """The ``LoRAConfig`` of the adapter set in ``directory`` and its whole ``adapter_config.json``.

    Raises:
        FileNotFoundError: no ``adapter_config.json`` there.
        AdapterError: it is not valid JSON, or not a LoRA adapter config clipforge reads.
    """
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter config (is {directory} a folder written by save_adapters?)")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path}: not valid JSON ({str(e)[:200]})") from None
    if not isinstance(meta, dict) or meta.get("kind") != "lora" or not isinstance(meta.get("lora"), dict):
        raise AdapterError(f"{path}: expected an object with kind 'lora' and a 'lora' config")
    if not isinstance(meta.get("clipforge_adapter_format"), int) or meta["clipforge_adapter_format"] > ADAPTER_FORMAT:
        raise AdapterError(f"{path}: clipforge_adapter_format {meta.get('clipforge_adapter_format')!r} is not one "
                           f"this clipforge reads (<= {ADAPTER_FORMAT})")
    try:
        return from_dict(LoRAConfig, meta["lora"], f"{path}: lora"), meta
    except ConfigError as e:
        raise AdapterError(str(e)) from None


def load_adapters(model: nn.Module, directory: str | Path, check_fingerprint: bool = True) -> nn.Module:
    """Loads the adapter set in ``directory`` into ``model`` (in place) and returns it.

    ``model`` is either the plain base model (the saved ``LoRAConfig`` is applied to it first) or one that already
    has adapters of the same config (their values are replaced).

    Args:
        model: The base model the adapters were trained on.
        directory: A folder written by ``save_adapters``.
        check_fingerprint: Refuse a base whose fingerprint differs from the one saved with the adapters. Turn it
            off only for the same weights in another form (another dtype changes the fingerprint).

    Raises:
        AdapterError: the fingerprint differs, the model's adapters have another config, or the tensors do not
            match the model's adapted layers (names and shapes).
        FileNotFoundError: ``directory`` holds no adapter set.
    """
    config, meta = read_adapter_config(directory)
    weights = Path(directory) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no adapter weights beside {ADAPTER_CONFIG}")
    current = lora_config(model)
    fingerprint = base_fingerprint(model) if current is not None else model_fingerprint(model)
    if check_fingerprint and fingerprint != meta.get("base_fingerprint"):
        raise AdapterError(f"{directory}: these adapters were trained on the base model with fingerprint "
                           f"{meta.get('base_fingerprint')} ({meta.get('base_class')}); this model's is {fingerprint}: "
                           "load the model they were trained from (check_fingerprint=False skips the check)")
    if current is None:
        apply_lora(model, config)
    elif current != config:
        raise AdapterError(f"{directory}: the adapters' config {config} differs from the model's {current}")
    from safetensors.torch import load_file

    state = load_file(weights)
    own = lora_state_dict(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise AdapterError(f"{weights}: adapter tensors do not match the model's adapted layers: missing "
                           f"{missing[:4]}, unexpected {unexpected[:4]}")
    with torch.no_grad():
        for name, tensor in own.items():
            if state[name].shape != tensor.shape:
                raise AdapterError(f"{weights}: {name} has shape {tuple(state[name].shape)}, the model's is "
                                   f"{tuple(tensor.shape)}")
            tensor.copy_(state[name])
    return model


def save_lora_model(model: nn.Module, text_processor: Any, directory: str | Path) -> Path:
    """What a LoRA run leaves in ``directory``: the merged full model (a model directory any loader reads) and the
    adapters alone in ``directory/adapters``. ``model`` keeps its adapters (a merged copy is written)."""
    from clipforge.checkpoints.native import save_pretrained

    directory = Path(directory)
    merged = merge_lora(copy.deepcopy(model))
    save_pretrained(merged, directory, text_processor)
    save_adapters(model, directory / "adapters")
    return directory
