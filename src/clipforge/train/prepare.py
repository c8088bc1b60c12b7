"""The one step before a run that touches the file system: ``prepare(config) -> Prepared``.

A ``TrainConfig`` is inert data (built, printed and compared without I/O). ``prepare`` does every check that
needs files, before any work and before a process group starts: the data source (paths, columns, shard
globs), the text-pair corpus, and the starting checkpoint, which it reads once; the loop then trains from
what it read instead of opening the checkpoint again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from clipforge.config import ConfigError
from clipforge.models.config import ModelConfig
from clipforge.models.presets import preset_hint
from clipforge.text import TextProcessor, build_text_processor
from clipforge.train.config import TrainConfig
from clipforge.train.finetune_config import DistillConfig


@dataclass
class Prepared:
    """What a run starts from, read once.

    Attributes:
        model_config: The architecture to train (the preset's or the checkpoint's, under ``model_overrides``).
        text_processor: The model's text processor (a checkpoint's own vocabulary when it carries one).
        start: The checkpoint's model with its weights, on the CPU; ``None`` for a preset (fresh weights). With
            ``lora`` it is the model to train: under the overrides, adapters applied, base weights frozen.
        teacher: ``distill.teacher``'s model (CPU, eval mode, no gradients), checked against the student's input.
    """

    model_config: ModelConfig
    text_processor: TextProcessor
    start: torch.nn.Module | None = None
    teacher: torch.nn.Module | None = None


def prepare(config: TrainConfig) -> Prepared:
    """Checks what ``config`` names on disk and reads the starting checkpoint (and a distillation teacher) once.

    Raises:
        ConfigError: see ``prepare_student``; or ``distill.teacher`` cannot be read, or does not take the student's
            input (image size and normalisation, text processor); or an ``eval.sets`` entry's data, class names or
            templates cannot be read (naming the field: ``eval.sets[0].data``).
    """
    if config.eval.sets:  # real-data evaluations: a missing folder is an error before the checkpoint is read
        from clipforge.train.eval_sets import check_eval_sets

        check_eval_sets(config.eval.sets)
    prepared = prepare_student(config)
    if config.distill.teacher is not None:
        prepared.teacher = _teacher(config.distill, prepared)
    return prepared


def _teacher(distill: DistillConfig, prepared: Prepared) -> torch.nn.Module:
    from clipforge.train.distill import check_teacher, load_teacher

    teacher, teacher_text = load_teacher(distill)
    check_teacher(prepared.model_config, prepared.text_processor, teacher, teacher_text)
    return teacher


def prepare_student(config: TrainConfig) -> Prepared:
    """Checks what ``config`` names on disk and reads the starting checkpoint once.

    Raises:
        ConfigError: a data path, table column, shard glob or corpus is missing, or ``model`` is neither a
            preset, a readable checkpoint nor a released one by name (``hf-hub:org/repo``, ``NAME:TAG``; naming
            the field and what was expected), or ``lora`` is asked of a preset (adapters fine-tune trained weights)
            or names a layer the model does not have.
    """
    from clipforge.data import check_source

    check_source(config.data)
    if config.text_pairs.fraction and config.text_pairs.path != "synthetic" and not Path(
            config.text_pairs.path).is_file():
        raise ConfigError(f"text_pairs.path: no such file: {config.text_pairs.path}")
    if config.starts_from_preset():
        if config.lora is not None:
            raise ConfigError(f"lora: adapters fine-tune a trained model, but model={config.model!r} is a preset "
                              "(fresh weights): give a model directory or checkpoint, e.g. model=runs/quickstart/final")
        model_config = config.model_config()
        return Prepared(model_config, build_text_processor(model_config))
    if not Path(config.model).exists():
        released = _released(config)
        if released is not None:
            return _with_lora(config, released)
        raise ConfigError(f"model: unknown model {config.model!r}: no preset of that name and no checkpoint at "
                          f"that path{preset_hint(config.model)}")
    from clipforge.checkpoints import load_any  # the converters load lazily

    try:
        start = load_any(config.model, allow_pickle=config.allow_pickle)
    except (ValueError, FileNotFoundError) as e:  # an unreadable checkpoint (CheckpointError is a ValueError)
        raise ConfigError(f"model: {e}") from None
    model_config = _resized(config, start, config.with_overrides(start.config))
    config.check_model(model_config)
    return _with_lora(config, Prepared(model_config, build_text_processor(model_config, config.model), start))


def _resized(config: TrainConfig, start: torch.nn.Module, model_config: ModelConfig) -> ModelConfig:
    """Resizes ``start`` in place to the image size and text context that ``model_config`` (the checkpoint's config
    under the overrides) asks for, and returns the overridden config of the resized model.

    The checkpoint loads at its own size first; then its position grid is resized bicubically
    (``resize_image_size``) and its text positions stretched (``resize_context``), so a 224-px checkpoint starts a
    336-px run and a 77-token one a 248-token run.

    Raises:
        ConfigError: the new image size is not a whole number of patches, or the new context is shorter than the
            checkpoint's (naming the override).
    """
    from clipforge.models.resize import resize_context, resize_image_size

    size = model_config.vision.image_size
    if size != start.config.vision.image_size:
        try:
            resize_image_size(start, size)  # type: ignore[arg-type]
        except ValueError as e:
            raise ConfigError(f"model_overrides.vision.image_size: {e}") from None
    old_text, new_text = getattr(start.config, "text", None), getattr(model_config, "text", None)
    if old_text is not None and new_text is not None and new_text.context_length != old_text.context_length:
        try:
            # Long-CLIP keeps the first 20 positions; a context under 22 keeps all but the two it interpolates over
            keep = min(20, max(old_text.context_length - 2, 0))
            resize_context(start, new_text.context_length, keep=keep)  # type: ignore[arg-type]
        except ValueError as e:
            raise ConfigError(f"model_overrides.text.context_length: {e}") from None
    return config.with_overrides(start.config)


def _with_lora(config: TrainConfig, prepared: Prepared) -> Prepared:
    """``prepared`` with ``config.lora``'s adapters on its model (built under the overrides first), printing how many
    parameters train; ``prepared`` itself without ``lora``.

    Raises:
        ConfigError: a LoRA target names no layer of the model.
    """
    if config.lora is None or prepared.start is None:
        return prepared
    from clipforge.checkpoints.native import load_state_dict_into
    from clipforge.models.factory import build_model
    from clipforge.models.lora import apply_lora, count_parameters, lora_layers

    model = prepared.start
    if prepared.model_config != model.config:  # overrides that keep every shape, as the loop's build_model does
        model = build_model(prepared.model_config)
        load_state_dict_into(model, prepared.start.state_dict(), config.model)
    apply_lora(model, config.lora, seed=config.seed)
    if os.environ.get("RANK", "0") == "0":  # prepare runs before the process group: one line per job, not per rank
        trainable, total = count_parameters(model)
        print(f"lora: rank {config.lora.rank} on {len(lora_layers(model))} layers ({', '.join(config.lora.targets)} "
              f"of {' and '.join(config.lora.towers)}): {trainable:,} trainable parameters of {total:,} "
              f"({100 * trainable / total:.2f}%)")
    return Prepared(prepared.model_config, prepared.text_processor, model)


def _released(config: TrainConfig) -> Prepared | None:
    """A start from released weights named as ``clipforge.load`` takes them (``hf-hub:org/repo``, ``NAME:TAG``,
    read from the Hugging Face cache); ``None`` when ``config.model`` is no such name.

    Raises:
        ConfigError: the weights cannot be fetched or read, or the overrides change the text processor beyond its
            context length (its files are the checkpoint's: convert it to a clipforge directory first, and start
            from that); see ``_resized``.
    """
    from clipforge.checkpoints.hub import is_hub_name, split_tag

    name, tag = split_tag(config.model, None)
    if not is_hub_name(name) and tag is None:
        return None
    from clipforge.api import load

    try:
        start, _, text_processor = load(name, pretrained=tag, allow_pickle=config.allow_pickle)
    except (ValueError, OSError) as e:  # CheckpointError and ConfigError are ValueErrors; not cached offline: OSError
        raise ConfigError(f"model: {e}") from None
    start = start.cpu().train()
    context = getattr(getattr(start.config, "text", None), "context_length", None)
    model_config = _resized(config, start, config.with_overrides(start.config))
    config.check_model(model_config)
    for field in ("text", "tokenizer", "render"):  # the text context alone may change: the tokenizer follows
        if getattr(model_config, field, None) != getattr(start.config, field, None):
            raise ConfigError(f"model_overrides.{field}: {config.model} brings its own text processor; only "
                              "text.context_length may change here; for anything else, convert the checkpoint first "
                              f"(clipforge convert {config.model} DIR --to clipforge) and train from DIR")
    new_context = getattr(getattr(model_config, "text", None), "context_length", None)
    if new_context != context:
        from clipforge.api import get_tokenizer

        text_processor = get_tokenizer(name, tag, context_length=new_context)
    return Prepared(model_config, text_processor, start)
