"""Fine-tuning CLIPPO for VQA by rendering: ``train_vqa(config) -> VQAResult``, and its evaluation.

Read it top to bottom: load the backbone (a saved CLIPPO directory, or a preset at random init), size the
question band to the longest question, build the composer, the synthetic VQA data and AdamW; then for each
step set the learning rate (warm-up + cosine), compute the cross-entropy over the answers, clip, step.
At the end the model is saved as ``<run>/final`` (``load_vqa``), evaluated on seen and held-out question
combinations of the test split, and ``results.json``, ``accuracy.png`` and ``loss.png`` land in the run dir.

Every step draws fresh scenes (the world is procedural), so there are no epochs: step ``s`` trains on
examples ``s·B … (s+1)·B − 1`` of the train split, a pure function of the config.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

import clipforge
from clipforge.checkpoints.vqa import VQAInput, save_vqa
from clipforge.config import ConfigError, from_dict, replace, to_dict
from clipforge.data.vqa import (
    ANSWERS,
    QUESTION_TYPES,
    QuestionImageComposer,
    SyntheticVQA,
    VQADataConfig,
    VQADataset,
    band_height,
)
from clipforge.models.vqa import VQA, VQAHeadConfig
from clipforge.train.config import OptimConfig, ScheduleConfig
from clipforge.train.metrics import MetricsLog, plot_loss, read_metrics
from clipforge.train.optim import build_optimizer, lr_at, set_lr


@dataclass(frozen=True)
class VQATrainConfig:
    """Everything that defines a VQA fine-tuning run.

    Attributes:
        model: A CLIPPO preset name (random init, e.g. ``clippo-tiny``) or a saved CLIPPO model directory.
        model_overrides: Changes to a preset's config (nested dict, as ``create_model`` takes them).
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
        seed: Seeds the head's initialisation and dropout.
        num_workers: DataLoader worker processes composing examples.
        plots: Write ``accuracy.png`` and ``loss.png``.
    """

    model: str = "clippo-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: VQADataConfig = field(default_factory=VQADataConfig)
    band: int | None = None
    head_hidden: int = 0
    head_dropout: float = 0.0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, weight_decay=0.05))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_steps=50))
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
        VQAHeadConfig(ANSWERS, self.head_hidden, self.head_dropout)  # a bad head setting fails before any work
        if not Path(self.model).exists():
            from clipforge.models.factory import build_config

            try:
                family = build_config(self.model, **self.model_overrides).family
            except ConfigError as e:
                raise ConfigError(f"model: {e} (or give a saved CLIPPO model directory)") from None
            if family != "clippo":
                raise ConfigError(f"model: {self.model!r} is a {family} model; VQA by rendering needs CLIPPO")


def load_vqa_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> VQATrainConfig:
    """Reads a YAML config (or the defaults) and applies dotted overrides (``optim.lr=1e-3``), validating all.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: The YAML is malformed or a field is wrong (the message names it).
    """
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        config = from_dict(VQATrainConfig, data, "config")
        return replace(config, overrides, "config") if overrides else config
    except ConfigError:
        raise
    except ValueError as e:  # the data config's own checks
        raise ConfigError(f"config.{e}") from None


@dataclass
class VQAResult:
    """What a finished VQA run reports.

    Attributes:
        run_dir: Where the config, metrics, results, plots and the model are.
        model_dir: The fine-tuned model (``load_vqa`` reads it).
        losses: ``(step, mean loss since the last log)``.
        results: The evaluation record (also ``results.json``).
        wall_time: Seconds the run took, evaluation included.
    """

    run_dir: Path
    model_dir: Path
    losses: list[tuple[int, float]]
    results: dict[str, Any]
    wall_time: float


def load_backbone(spec: str, device: torch.device | str = "cpu", overrides: dict[str, Any] | None = None
                  ) -> clipforge.CLIPPO:
    """A saved CLIPPO model directory (``clipforge.load``) or a CLIPPO preset (with ``overrides``) at random init.

    ``overrides`` are for presets: a saved model keeps its own config, and a notice says they were ignored (so
    a config that pins a preset's renderer also serves ``model=<saved dir>``).

    Raises:
        ConfigError: ``spec`` names an unknown preset or a model that is not CLIPPO.
    """
    if Path(spec).exists():
        if overrides:  # a config's pinned preset changes: the saved model's own config decides its shape
            print(f"model_overrides ignored: {spec} is a saved model (they apply to presets only)", file=sys.stderr)
        model, _, _ = clipforge.load(spec, device=device)
    else:
        model = clipforge.create_model(spec, device=device, **(overrides or {}))
    if model.config.family != "clippo":
        raise ConfigError(f"model: {spec} is a {model.config.family} model; VQA by rendering needs CLIPPO")
    return model


def build_composer(backbone: clipforge.CLIPPO, data: VQADataConfig, band: int | None) -> QuestionImageComposer:
    """The composer for a backbone: its own renderer, and ``band`` or the height the longest question needs."""
    renderer = clipforge.get_text_processor(backbone)
    if band is None:
        band = band_height(renderer, SyntheticVQA(data).all_questions())
    return QuestionImageComposer(renderer, band)


def saved_inputs(model: VQA, inputs: VQAInput) -> tuple[QuestionImageComposer, VQADataConfig]:
    """The composer and data config a saved VQA model was trained with (``load_vqa``'s second value).

    Raises:
        ConfigError: The recorded data config is invalid.
    """
    composer = QuestionImageComposer(clipforge.get_text_processor(model.backbone), inputs.band)
    try:
        data = from_dict(VQADataConfig, inputs.data, "vqa.data")
    except ValueError as e:
        raise ConfigError(f"vqa.json: {e}") from None
    return composer, data


def train_vqa(config: VQATrainConfig, device: torch.device | str = "cpu") -> VQAResult:
    """Fine-tunes a CLIPPO backbone with a classifier head on synthetic VQA; saves, evaluates, plots.

    Args:
        config: The validated run config.
        device: Where to train.

    Returns:
        The run's summary; ``results`` holds accuracy per question type on seen and held-out combinations.
    """
    start = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(config.seed)

    # --- Model, input, data, optimiser. ---
    backbone = load_backbone(config.model, device, config.model_overrides)
    composer = build_composer(backbone, config.data, config.band)  # a band that does not fit fails here
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    vqa = SyntheticVQA(config.data, image_size=composer.image_region[0])
    model = VQA(backbone, VQAHeadConfig(ANSWERS, config.head_hidden, config.head_dropout)).to(device)
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


# --- Evaluation. ---


@torch.no_grad()
def predict(model: VQA, pixels: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Answer probabilities (N, A) for composed uint8 canvases (N, 3, H, W), on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    out = [model(pixels[i:i + batch_size].to(device)).float().softmax(-1).cpu()
           for i in range(0, len(pixels), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, len(model.answers))


@torch.no_grad()
def evaluate_vqa(model: VQA, dataset: VQADataset, batch_size: int = 128) -> dict[str, Any]:
    """Accuracy per question type and overall, and the best constant answer per type as a reference.

    Args:
        model: The VQA model (its answer vocabulary must be ``ANSWERS``).
        dataset: Composed examples.
        batch_size: Examples per forward pass (on the model's device).

    Returns:
        ``{"accuracy": {type: acc, "all": acc}, "constant_baseline": {type: acc, "all": acc}, "n": {type: n},
        "by_answer": {type: {answer: acc}}}``; ``by_answer`` shows e.g. whether "how many …" is answered
        right for absent shapes ("0") as well as present ones.
    """
    if tuple(model.answers) != ANSWERS:
        raise ValueError("the model's answer vocabulary differs from the synthetic VQA answers")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    preds, labels, kinds = [], [], []
    for pixels, answers, kind, _ in loader:
        preds.append(predict(model, pixels, batch_size).argmax(-1))
        labels.append(answers)
        kinds.append(kind)
    pred, label, kind = torch.cat(preds), torch.cat(labels), torch.cat(kinds)
    right = pred == label
    accuracy, baseline, counts, by_answer = {}, {}, {}, {}
    for k, name in enumerate(QUESTION_TYPES):
        mask = kind == k
        if not mask.any():
            continue
        counts[name] = int(mask.sum())
        accuracy[name] = float(right[mask].float().mean())
        baseline[name] = float(label[mask].bincount().max() / mask.sum())
        by_answer[name] = {ANSWERS[a]: float(right[mask & (label == a)].float().mean())
                           for a in label[mask].unique().tolist()}
    accuracy["all"] = float(right.float().mean())
    baseline["all"] = sum(baseline[k] * counts[k] for k in counts) / len(label)
    return {"accuracy": accuracy, "constant_baseline": baseline, "n": counts, "by_answer": by_answer}


def evaluate_splits(model: VQA, vqa: SyntheticVQA, composer: QuestionImageComposer, size: int,
                    batch_size: int = 128) -> dict[str, Any]:
    """``evaluate_vqa`` on ``size`` test examples of seen and of held-out combinations, with the held-out list."""
    out: dict[str, Any] = {"split": "test", "heldout_combinations": {k: list(v) for k, v in vqa.heldout.items()}}
    for combos in ("seen", "heldout"):
        if combos == "heldout" and not any(vqa.heldout.values()):
            continue
        out[combos] = evaluate_vqa(model, vqa.dataset("test", size, composer, combos), batch_size)
    return out


def write_json(path: Path, record: dict[str, Any]) -> Path:
    """Writes ``record`` as indented JSON."""
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def plot_accuracy(results: dict[str, Any], path: str | Path) -> None:
    """Bars of accuracy per question type, seen and held-out side by side, the constant baseline as ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in ("seen", "heldout") if g in results]
    kinds = [k for k in (*QUESTION_TYPES, "all") if k in results[groups[0]]["accuracy"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(groups)
    for g, group in enumerate(groups):
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(kinds))]
        acc = [results[group]["accuracy"].get(k, float("nan")) for k in kinds]
        bars = ax.bar(xs, acc, width, label=f"{group} combinations")
        ax.bar_label(bars, labels=[f"{a:.0%}" for a in acc], fontsize=7)
        base = [results[group]["constant_baseline"].get(k, float("nan")) for k in kinds]
        ax.scatter(xs, base, marker="_", s=300, color="black", label="best constant answer" if g == 0 else None)
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels(kinds)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(f"VQA by rendering: {results.get('model', '')}, {results.get('steps', '?')} steps")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
