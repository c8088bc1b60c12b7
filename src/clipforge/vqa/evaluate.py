"""Evaluating a VQA model: accuracy per question type on seen and held-out combinations, and its plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from clipforge.vqa.compose import QuestionImageComposer
from clipforge.vqa.data import ANSWERS, QUESTION_TYPES, SyntheticVQA, VQADataset
from clipforge.vqa.model import VQA


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
