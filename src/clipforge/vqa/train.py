"""Fine-tuning CLIPPO for VQA by rendering: the run's config, ``prepare_vqa``, and ``train_vqa(config)``.

A run is three explicit steps. ``load_vqa_config`` builds the typed config from YAML and dotted overrides
without touching any other file; ``prepare_vqa`` does everything that reads files or depends on the model,
before any work: it reads a saved starting model once, sizes the question band and builds the composer and
the synthetic world; ``train_vqa`` trains from what it prepared.

Read ``train_vqa`` top to bottom: seed, build the backbone (a copy of the saved one, or the preset at random
init), the VQA model and AdamW; then for each step set the learning rate (warm-up + cosine), compute the
cross-entropy over the answers, clip, step. At the end the model is saved as ``<run>/final`` (``load_vqa``),
evaluated on seen and held-out question combinations of the test split, and ``results.json``,
``accuracy.png`` and ``loss.png`` land in the run dir.

Every step draws fresh scenes (the world is procedural), so there are no epochs: step ``s`` trains on
examples ``s·B … (s+1)·B − 1`` of the train split, a pure function of the config.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clipforge.config import ConfigError, apply_overrides, from_dict, load_yaml, save_yaml, to_dict
from clipforge.models.config import ModelConfig
from clipforge.models.factory import build_config, build_model
from clipforge.models.presets import list_presets, preset_hint
from clipforge.text import build_text_processor
from clipforge.train.config import OptimConfig, ScheduleConfig
from clipforge.train.metrics import MetricsLog, plot_loss, read_metrics
from clipforge.train.optim import build_optimizer, lr_at, set_lr
from clipforge.vqa.checkpoint import VQAInput, save_vqa
from clipforge.vqa.compose import QuestionImageComposer, band_height
from clipforge.vqa.data import ANSWERS, SyntheticVQA, VQADataConfig
from clipforge.vqa.evaluate import evaluate_splits, plot_accuracy, write_json
from clipforge.vqa.model import VQA, VQAHeadConfig


@dataclass(frozen=True)
class VQAOptimConfig(OptimConfig):
    """``OptimConfig`` with fine-tuning defaults: a lower peak learning rate and weight decay.

    The defaults live in the type, so a YAML section or an override that sets some fields keeps these for the
    rest.
    """

    lr: float = 3e-4
    weight_decay: float = 0.05


@dataclass(frozen=True)
class VQAScheduleConfig(ScheduleConfig):
    """``ScheduleConfig`` with a shorter default warm-up, for runs of a few hundred to a few thousand steps."""

    warmup_steps: int = 50


@dataclass(frozen=True)
class VQATrainConfig:
    """Everything that defines a VQA fine-tuning run: inert data, built and checked without reading any file.

    Attributes:
        model: A registered CLIPPO preset (random init, e.g. ``clippo-tiny``); any other value is the path of a
            saved CLIPPO model (a clipforge directory, or a checkpoint ``clipforge convert`` reads without
            pickle), read by ``prepare_vqa``.
        model_overrides: Changes to a preset's config (nested mappings, as ``create_model`` takes them). A saved
            model keeps its own config: they are ignored there, with a notice.
        data: The synthetic VQA world.
        band: Question band height in pixels; ``None``: the rows the longest question needs.
        head_hidden: Hidden width of the head (0: LayerNorm → Linear).
        head_dropout: Dropout in the head.
        optim: AdamW settings (weight decay on weight matrices only).
        schedule: Warm-up and cosine decay.
        steps: Optimiser steps.
        batch_size: Examples per step.
        eval_size: Test examples for each of seen and held-out combinations.
        log_every: Log the loss every this many steps.
        output_dir: The run directory.
        seed: Seeds the backbone's random initialisation (a preset), the head's and dropout.
        num_workers: DataLoader worker processes composing examples.
        plots: Write ``accuracy.png`` and ``loss.png``.
    """

    model: str = "clippo-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: VQADataConfig = field(default_factory=VQADataConfig)
    band: int | None = None
    head_hidden: int = 0
    head_dropout: float = 0.0
    optim: VQAOptimConfig = field(default_factory=VQAOptimConfig)
    schedule: VQAScheduleConfig = field(default_factory=VQAScheduleConfig)
    steps: int = 1000
    batch_size: int = 64
    eval_size: int = 400
    log_every: int = 10
    output_dir: str = "runs/vqa"
    seed: int = 0
    num_workers: int = 0
    plots: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_size", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.schedule.warmup_steps > self.steps:
            raise ConfigError(f"schedule.warmup_steps={self.schedule.warmup_steps} exceeds steps={self.steps}")
        if self.optim.lazy_embedding:
            raise ConfigError("optim.lazy_embedding updates a token table's used rows; VQA by rendering trains CLIPPO, "
                              "which reads its text as pixels and has none: set optim.lazy_embedding: false")
        self.head_config()  # a bad head setting fails before any work
        if self.starts_from_preset():  # a saved model's family is checked when ``prepare_vqa`` reads it
            self.model_config()

    def starts_from_preset(self) -> bool:
        """Whether ``model`` names a preset (fresh weights); otherwise it is the path of a saved model."""
        return self.model in list_presets()

    def model_config(self) -> ModelConfig:
        """The validated backbone config of a preset start (the preset under ``model_overrides``).

        Raises:
            ConfigError: a bad override, a preset that is not CLIPPO, or ``model`` is not a preset (a saved
                model's config is read by ``prepare_vqa``).
        """
        if not self.starts_from_preset():
            raise ConfigError(f"model: {self.model!r} is not a preset; a saved model's config comes from "
                              "prepare_vqa()")
        try:
            config = build_config(self.model, **self.model_overrides)
        except ConfigError as e:
            raise ConfigError(f"model: {e}") from None
        if config.family != "clippo":
            raise ConfigError(f"model: {self.model!r} is a {config.family} model; VQA by rendering needs CLIPPO")
        return config

    def head_config(self) -> VQAHeadConfig:
        """The classifier head over the synthetic world's answers."""
        return VQAHeadConfig(ANSWERS, self.head_hidden, self.head_dropout)


def load_vqa_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> VQATrainConfig:
    """Reads a YAML config (or the defaults) and applies dotted overrides, validating every field.

    The same machinery and override semantics as ``clipforge train`` (``clipforge.train.load_config``):
    ``load_yaml``, then ``apply_overrides`` (a dotted key sets one value, creating the mappings it names:
    ``optim.lr=1e-3``, ``model_overrides.render.mode=improved``; a mapping value replaces the field whole),
    then ``from_dict``. Fields a section leaves out take the VQA defaults (``VQAOptimConfig``,
    ``VQAScheduleConfig``). One difference from training is kept on purpose: ``model_overrides`` apply to a
    preset only. With ``model=<saved model>`` the saved config decides the backbone and ``prepare_vqa`` says
    the overrides were ignored, so one config that pins a preset's renderer also serves a saved start.

    Only the file at ``path`` is read; checks that read a saved model run in ``prepare_vqa``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: The YAML is malformed or a field is wrong (the message names it, on one line).
    """
    data = load_yaml(path) if path is not None else {}
    return from_dict(VQATrainConfig, apply_overrides(data, overrides or {}), "config")


@dataclass
class PreparedVQA:
    """What a VQA run starts from, read and checked once by ``prepare_vqa``.

    Attributes:
        config: The run config it was prepared for.
        model_config: The backbone's architecture (the preset's under ``model_overrides``, or the saved model's).
        composer: The model input's composer: the backbone's renderer and the run's question band.
        vqa: The synthetic VQA world, its scenes at the composer's image region.
        start: The saved backbone with its weights, on the CPU; ``None`` for a preset (fresh weights).
    """

    config: VQATrainConfig
    model_config: ModelConfig
    composer: QuestionImageComposer
    vqa: SyntheticVQA
    start: torch.nn.Module | None = None


def prepare_vqa(config: VQATrainConfig) -> PreparedVQA:
    """Reads a saved starting model once and builds the input, so every check is done before any work.

    Raises:
        ConfigError: ``model`` is neither a preset nor a readable saved model, is not CLIPPO, or ``band`` does
            not fit the backbone's canvas (naming the field).
    """
    start = None
    if config.starts_from_preset():
        model_config = config.model_config()
    else:
        if not Path(config.model).exists():
            raise ConfigError(f"model: unknown model {config.model!r}{preset_hint(config.model)} "
                              "(or give a saved CLIPPO model directory)")
        if config.model_overrides:  # a config's pinned preset changes: the saved model's own config decides
            print(f"model_overrides ignored: {config.model} is a saved model (they apply to presets only)",
                  file=sys.stderr)
        from clipforge.checkpoints import load_any  # the converters load lazily

        try:
            start = load_any(config.model)
        except (ValueError, FileNotFoundError) as e:  # an unreadable checkpoint (CheckpointError is a ValueError)
            raise ConfigError(f"model: {e}") from None
        model_config = start.config
        if model_config.family != "clippo":
            raise ConfigError(f"model: {config.model} is a {model_config.family} model; VQA by rendering needs "
                              "CLIPPO")
    renderer = build_text_processor(model_config)
    band = config.band
    if band is None:  # the rows the longest question needs
        band = band_height(renderer, SyntheticVQA(config.data).all_questions())
    try:
        composer = QuestionImageComposer(renderer, band)
    except ValueError as e:  # the band does not fit this model's canvas
        raise ConfigError(str(e)) from None
    vqa = SyntheticVQA(config.data, image_size=composer.image_region[0])
    return PreparedVQA(config, model_config, composer, vqa, start)


@dataclass
class VQAResult:
    """What a finished VQA run reports.

    Attributes:
        run_dir: Where the config, metrics, results, plots and the model are.
        model_dir: The fine-tuned model (``load_vqa`` reads it).
        losses: ``(step, mean loss since the last log)``.
        results: The evaluation record (also ``results.json``).
        wall_time: Seconds ``train_vqa`` took, evaluation included.
    """

    run_dir: Path
    model_dir: Path
    losses: list[tuple[int, float]]
    results: dict[str, Any]
    wall_time: float


def train_vqa(config: VQATrainConfig, device: torch.device | str = "cpu", prepared: PreparedVQA | None = None
              ) -> VQAResult:
    """Fine-tunes a CLIPPO backbone with a classifier head on synthetic VQA; saves, evaluates, plots.

    Args:
        config: The validated run config.
        device: Where to train.
        prepared: ``prepare_vqa(config)``, when the caller has already run it (the CLI does, to fail before
            any work); ``None`` runs it here. Its saved backbone is copied, never trained in place.

    Returns:
        The run's summary; ``results`` holds accuracy per question type on seen and held-out combinations.
    """
    start = time.perf_counter()
    if prepared is None:
        prepared = prepare_vqa(config)
    elif prepared.config != config:
        raise ValueError("train_vqa: `prepared` was prepared for another config")
    device = torch.device(device)
    torch.manual_seed(config.seed)

    # --- Model, input, data, optimiser. ---
    if prepared.start is not None:
        backbone = copy.deepcopy(prepared.start).to(device)
    else:
        backbone = build_model(prepared.model_config, device)
    composer, vqa = prepared.composer, prepared.vqa
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, run_dir / "config.yaml")
    model = VQA(backbone, config.head_config()).to(device)
    o = config.optim
    optimizer = build_optimizer(model, o.lr, o.weight_decay, o.betas, o.eps, device)
    train_set = vqa.dataset("train", config.steps * config.batch_size, composer)
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, num_workers=config.num_workers)
    metrics = MetricsLog(run_dir)

    # --- The loop. ---
    model.train()
    losses: list[tuple[int, float]] = []
    zero = lambda: torch.zeros((), device=device)  # running sums stay on the device: one host sync per log
    loss_sum, correct, seen, t_log = zero(), zero(), 0, time.perf_counter()
    for step, (pixels, answers, _, _) in enumerate(loader):
        lr = lr_at(step, o.lr, config.schedule.warmup_steps, config.steps, config.schedule.min_lr)
        set_lr(optimizer, lr)
        pixels, answers = pixels.to(device, non_blocking=True), answers.to(device, non_blocking=True)
        logits = model(pixels)
        loss = F.cross_entropy(logits, answers)
        loss.backward()
        if o.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(-1) == answers).sum()
        seen += len(answers)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            n = config.log_every if done % config.log_every == 0 else done % config.log_every
            mean_loss, accuracy = loss_sum.item() / n, correct.item() / seen
            rate = seen / (time.perf_counter() - t_log)
            losses.append((done, mean_loss))
            metrics.log(done, {"loss": mean_loss, "train_accuracy": accuracy, "lr": lr, "samples_per_s": rate})
            print(f"step {done}/{config.steps}: loss {mean_loss:.3f}, train accuracy {accuracy:.1%}, "
                  f"{rate:.0f} samples/s", flush=True)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"loss is {mean_loss} at step {done}")
            loss_sum, correct, seen, t_log = zero(), zero(), 0, time.perf_counter()
    metrics.close()

    # --- Save, evaluate, report. ---
    model_dir = save_vqa(model, run_dir / "final", VQAInput(composer.band, to_dict(config.data)))
    results = evaluate_splits(model, vqa, composer, config.eval_size, config.batch_size)
    results |= {"model": config.model, "steps": config.steps, "batch_size": config.batch_size,
                "band": composer.band, "final_loss": losses[-1][1], "chance_loss": math.log(len(ANSWERS)),
                "device": str(device), "threads": torch.get_num_threads(),
                "wall_seconds": time.perf_counter() - start}  # training and evaluation
    write_json(run_dir / "results.json", results)
    if config.plots:
        plot_accuracy(results, run_dir / "accuracy.png")
        plot_loss(read_metrics(run_dir / "metrics.jsonl"), run_dir / "loss.png")
    return VQAResult(run_dir, model_dir, losses, results, time.perf_counter() - start)
