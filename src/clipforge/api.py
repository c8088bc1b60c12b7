"""The functions behind the public API (``clipforge.create_model`` …): each composes the model, transform,
text-processor and checkpoint packages. ``clipforge/__init__.py`` re-exports them; code inside clipforge
imports them from here, never from the top-level package.

Model names: clipforge's presets (``list_models()``), OpenCLIP's names (``ViT-B-32``, ``ViT-L-14-336``,
``ViT-B-16-SigLIP`` …, see ``clipforge.checkpoints.hub``) and, for released weights, ``pretrained=TAG``
(``list_pretrained()``), the spelling ``NAME:TAG``, or ``hf-hub:org/repo[@revision]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from clipforge.config import ConfigError, replace
from clipforge.models.clip import CLIP
from clipforge.models.clippo import CLIPPO
from clipforge.models.config import ModelConfig
from clipforge.models.factory import build_config, build_model
from clipforge.models.presets import list_presets
from clipforge.text import TextProcessor, build_text_processor
from clipforge.transforms import AnyEvalTransform, AnyTrainTransform, model_transforms

_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_HUB_CONFIGS: dict[str, ModelConfig] = {}  # snapshot directory → the config loaded from it, for get_tokenizer


def list_models() -> list[str]:
    """Names of every registered model preset (OpenCLIP's names are accepted beside them)."""
    return list_presets()


def list_pretrained() -> list[tuple[str, str]]:
    """Every (OpenCLIP model name, pretrained tag) with released weights clipforge loads from the Hugging Face Hub."""
    from clipforge.checkpoints.hub import list_pretrained as registry_entries

    return registry_entries()


def _named_config(name: str | ModelConfig | dict[str, Any], **overrides: Any) -> ModelConfig:
    if isinstance(name, str):
        from clipforge.checkpoints.hub import build_named_config

        return build_named_config(name, **overrides)
    return build_config(name, **overrides)


def _load_named(name: str, pretrained: str | None, device: torch.device | str | None, precision: str,
                cache_dir: str | Path | None, allow_pickle: bool = False, **kwargs: Any
                ) -> tuple[CLIP | CLIPPO, Path | None]:
    """A model with released weights (``hf-hub:`` name, or a model name and pretrained tag or file) and the
    directory its text processor's files are in."""
    from clipforge.checkpoints import load_any
    from clipforge.checkpoints.hub import hub_snapshot, is_hub_name, parse_hub_name, resolve_pretrained

    if is_hub_name(name):
        if pretrained is not None:
            raise ConfigError(f"{name!r} names its weights already; pretrained={pretrained!r} cannot be used with it")
        repo, revision = parse_hub_name(name)
        snapshot = hub_snapshot(repo, revision, allow_pickle, cache_dir=cache_dir)
        model = load_any(snapshot, device=device, precision=precision, allow_pickle=allow_pickle, **kwargs)
        _HUB_CONFIGS[str(snapshot)] = model.config
        return model, snapshot
    assert pretrained is not None
    act = kwargs.pop("act", None)
    directory: Path | None
    if os.path.exists(pretrained):  # OpenCLIP also takes a checkpoint file as ``pretrained``
        config, source, label = _named_config(name), Path(pretrained), pretrained
        directory = source if source.is_dir() else None
    else:
        source, config, label = resolve_pretrained(name, pretrained, allow_pickle, cache_dir)
        directory = source
    if act is not None:  # one activation for both towers, as ``act=`` means for the readers
        config = replace(config, {"act": act, **({"vision": {"act": None}} if hasattr(config.vision, "act") else {})})
    if getattr(config.vision, "act", None) is None:  # else the towers differ and the reader finds both
        kwargs["act"] = config.act
    model = load_any(source, device=device, precision=precision, allow_pickle=allow_pickle, **kwargs)
    return _with_config(model, config, label, device, precision), directory


def _with_config(model: CLIP | CLIPPO, config: ModelConfig, source: str, device: torch.device | str | None,
                 precision: str) -> CLIP | CLIPPO:
    """The model as ``config`` (the name's architecture, the weights' preprocessing) describes it.

    A checkpoint that does not record every fact (heads, activation) was read with a guess; when the guess built
    other modules than the name's config, the weights are moved into a model built from that config, which also
    checks every shape (an error names the tensor and both shapes). The text processor's settings stay the
    reader's, which found the checkpoint's vocabulary files.
    """
    from clipforge.checkpoints.hub import CHECKPOINT_FIELDS, architecture
    from clipforge.checkpoints.native import model_from_state_dict

    read = {key: getattr(model.config, key) for key in CHECKPOINT_FIELDS if hasattr(model.config, key)}
    if read and all(hasattr(config, key) for key in read):
        config = replace(config, read)  # the reader saw the checkpoint's vocabulary files; the preset did not
    if architecture(model.config) == architecture(config):
        model.config = config  # the same modules: only the preprocessing facts change
        return model
    return model_from_state_dict(config, model.state_dict(), source, device, precision)


def create_model(name: str | ModelConfig | dict[str, Any], device: torch.device | str | None = None,
                 pretrained: str | None = None, precision: str = "fp32", cache_dir: str | Path | None = None,
                 allow_pickle: bool = False, **overrides: Any) -> CLIP | CLIPPO:
    """Builds a model from a preset or OpenCLIP name or a config: randomly initialised, or with released weights.

    Args:
        name: A preset name (``list_models()``), an OpenCLIP name (``"ViT-B-32"``), ``"NAME:TAG"``, an
            ``"hf-hub:org/repo[@revision]"`` name, a config mapping, or a config.
        device: Where to put the model.
        pretrained: A pretrained tag of ``name`` (``list_pretrained()``, e.g. ``"laion2b_s34b_b79k"``), or a
            checkpoint file/directory holding ``name``'s weights; ``None`` initialises randomly.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        cache_dir: The Hugging Face Hub cache (default: huggingface_hub's, ``HF_HUB_CACHE`` / ``HF_HOME``).
        allow_pickle: Allow reading a pickled weights file.
        **overrides: Config fields to change, e.g. ``embed_dim=256`` or ``vision={"layers": 6}``; an
            unknown or misspelled field is an error naming it. Fresh models only.

    Raises:
        ConfigError: a bad field or name, or a model beyond the size limits, checked before anything is allocated
            (``clipforge.models.size``: 10 billion parameters, 4 GiB of activations per sample; raised with
            ``CLIPFORGE_MAX_PARAMS`` / ``CLIPFORGE_MAX_ACTIVATION_BYTES``; not applied on the meta device).
        CheckpointError: released weights that cannot be fetched or read (offline and not cached, for one).
    """
    from clipforge.checkpoints.hub import is_hub_name, split_tag

    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {list(_PRECISIONS)}, got {precision!r}")
    name, pretrained = split_tag(name, pretrained)
    if pretrained is not None or is_hub_name(name):
        if overrides:
            raise ConfigError(f"config overrides ({', '.join(overrides)}) apply to freshly initialised models, not to "
                              "released weights")
        if not isinstance(name, str):
            raise ConfigError("pretrained= needs a model name, not a config")
        return _load_named(name, pretrained, device, precision, cache_dir, allow_pickle)[0]
    model = build_model(_named_config(name, **overrides), device)
    return model if precision == "fp32" else model.to(_PRECISIONS[precision])


def create_model_and_transforms(name: str | ModelConfig | dict[str, Any], device: torch.device | str | None = None,
                                pretrained: str | None = None, precision: str = "fp32",
                                cache_dir: str | Path | None = None, allow_pickle: bool = False, **overrides: Any
                                ) -> tuple[CLIP | CLIPPO, AnyTrainTransform, AnyEvalTransform]:
    """Builds a model (see ``create_model``) and its (train, eval) image transforms, as OpenCLIP's function of the
    same name returns them: ``model, train_transform, eval_transform``."""
    model = create_model(name, device, pretrained, precision, cache_dir, allow_pickle, **overrides)
    return (model, *model_transforms(model.config))


def get_text_processor(model_or_config: torch.nn.Module | ModelConfig, directory: str | Path | None = None
                       ) -> TextProcessor:
    """The callable that turns strings into the model's text input (``processor(texts) -> Tensor``).

    CLIP models get the byte-level BPE tokenizer (with the vocabulary saved in ``directory`` when there
    is one, else OpenAI's); CLIPPO models get the Unifont renderer their config names. The choice is
    carried by the model's config, so callers never branch on the model family.
    """
    config = model_or_config.config if isinstance(model_or_config, torch.nn.Module) else model_or_config
    return build_text_processor(config, directory)


def get_tokenizer(name: str, pretrained: str | None = None, context_length: int | None = None,
                  cache_dir: str | Path | None = None) -> TextProcessor:
    """The text processor of a named model, as OpenCLIP's ``get_tokenizer(name)``: ``tokenizer(texts) -> Tensor``.

    Args:
        name: A preset or OpenCLIP name (its config decides), ``"NAME:TAG"``, or ``"hf-hub:org/repo[@revision]"``
            (the processor of that checkpoint, with the tokenizer files it carries; the checkpoint is read once
            unless it was loaded in this process).
        pretrained: A pretrained tag: the processor gets the tokenizer files of that checkpoint's repository.
        context_length: Tokens per text, when not the model's.
        cache_dir: The Hugging Face Hub cache (default: huggingface_hub's).
    """
    from clipforge.checkpoints.hub import (
        hub_snapshot,
        is_hub_name,
        parse_hub_name,
        pretrained_config,
        pretrained_entry,
        pretrained_registry,
        split_tag,
    )

    name, pretrained = split_tag(name, pretrained)
    directory: Path | None = None
    if is_hub_name(name):
        repo, revision = parse_hub_name(name)
        directory = hub_snapshot(repo, revision, cache_dir=cache_dir)
        config = _HUB_CONFIGS.get(str(directory)) or _load_named(name, None, "meta", "fp32", cache_dir)[0].config
    elif pretrained is not None:
        oc_name, entry = pretrained_entry(name, pretrained)
        config = pretrained_config(oc_name, entry)
        directory = hub_snapshot(entry["repo"], weights=(), cache_dir=cache_dir, label=f"{name} ({pretrained})")
    else:
        config = _named_config(name)
    if context_length is not None:
        config = replace(config, {"text": {"context_length": context_length}})
    if directory is None and name in pretrained_registry():
        try:
            return build_text_processor(config)
        except (OSError, ValueError):  # a processor that needs its checkpoint's files (a SentencePiece model)
            entry = next(iter(pretrained_registry()[name].values()))
            directory = hub_snapshot(entry["repo"], weights=(), cache_dir=cache_dir, label=name)
    return build_text_processor(config, directory)


def load(path: str | Path, device: torch.device | str | None = None, precision: str = "fp32",
         pretrained: str | None = None, cache_dir: str | Path | None = None,
         **kwargs: Any) -> tuple[CLIP | CLIPPO, AnyEvalTransform, TextProcessor]:
    """Loads a saved model or a released checkpoint with its eval transform and text processor.

    Args:
        path: A clipforge model directory or an OpenAI / open_clip / HF / big_vision checkpoint (converted on the
            fly); an ``"hf-hub:org/repo[@revision]"`` name; or a model name (preset or OpenCLIP) with
            ``pretrained``, or spelled ``"NAME:TAG"``.
        device: Where to put the model.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        pretrained: The pretrained tag (``list_pretrained()``) or weights file of a model name.
        cache_dir: The Hugging Face Hub cache (default: huggingface_hub's, ``HF_HUB_CACHE`` / ``HF_HOME``).
        **kwargs: Passed to the checkpoint reader (e.g. ``allow_pickle=True`` for pickled files, ``act=``).
    """
    from clipforge.checkpoints import load_any  # the converters load lazily: importing clipforge stays quick
    from clipforge.checkpoints.hub import is_hub_name, known_model_names, split_tag

    name, pretrained = split_tag(str(path) if isinstance(path, Path) else path, pretrained)
    directory: Path | None
    if is_hub_name(name) or pretrained is not None:
        model, directory = _load_named(name, pretrained, device, precision, cache_dir, **kwargs)
    elif not os.path.exists(name) and name in known_model_names():
        raise ConfigError(f"{name!r} is a model name, not a checkpoint: pass pretrained=TAG for released weights "
                          "(clipforge.list_pretrained() lists the tags), or use create_model for random ones")
    else:
        model = load_any(name, device=device, precision=precision, **kwargs)
        directory = Path(name) if Path(name).is_dir() else None
    model.eval()
    _, eval_tf = model_transforms(model.config)
    return model, eval_tf, get_text_processor(model, directory)
