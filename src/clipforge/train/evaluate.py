"""Periodic evaluation during training: zero-shot accuracy on the synthetic tasks and caption retrieval.

The scoring is ``clipforge.eval``'s (prompt-ensembled classifiers, Recall@K); this module only prepares
the synthetic world's tasks once (rendered and transformed) so that evaluating every N steps is cheap,
and keeps the model's train/eval modes intact around it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from clipforge.eval import EvalModel, build_classifier, retrieval_metrics


@dataclass
class EvalSet:
    """Pre-transformed evaluation data: zero-shot tasks and a retrieval set.

    Attributes:
        tasks: ``name -> (images (N, 3, H, W), labels (N,), classnames, templates)``.
        retrieval_images: (M, 3, H, W) images.
        retrieval_captions: ``captions[i]`` are the captions of image ``i``.
        raw_images: The retrieval set's PIL images (for plots).
    """

    tasks: dict[str, tuple[torch.Tensor, torch.Tensor, list[str], list[str]]]
    retrieval_images: torch.Tensor
    retrieval_captions: list[list[str]]
    raw_images: list


def build_eval_set(world: object, transform: Callable, size: int, retrieval_size: int, language: str,
                   split: str) -> EvalSet:
    """Renders and transforms the world's zero-shot tasks and retrieval set once."""
    tasks = {}
    for task in world.zeroshot_tasks(size, language=language, split=split):  # type: ignore[attr-defined]
        images = torch.stack([transform(im) for im in task.images])
        tasks[task.name] = (images, torch.tensor(task.labels), list(task.classnames), list(task.templates))
    raw, captions = world.retrieval_set(retrieval_size, language=language, split=split)  # type: ignore[attr-defined]
    images = torch.stack([transform(im) for im in raw]) if raw else torch.empty(0)
    return EvalSet(tasks, images, captions, raw)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; afterwards every submodule's mode is restored (a locked tower stays in eval)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _encode_images(model: EvalModel, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([model.encode_images(images[i:i + batch]) for i in range(0, len(images), batch)])


def evaluate(model: nn.Module, data: EvalSet, text_processor: Callable, device: torch.device) -> dict[str, float]:
    """Zero-shot top-1 per task (``zeroshot/<task>``) and retrieval Recall@1/5 (``retrieval/...``).

    Retrieval keys follow CLIP_benchmark: ``image_retrieval_recall@K`` (caption → image) and
    ``text_retrieval_recall@K`` (image → caption).
    """
    with eval_mode(model), torch.no_grad():
        scorer = EvalModel(model, transform=lambda image: image, processor=text_processor, device=device)
        results = {}
        for name, (images, labels, classnames, templates) in data.tasks.items():
            classifier = build_classifier(scorer, classnames, templates, use_cache=False)  # (D, C)
            predictions = (_encode_images(scorer, images) @ classifier).argmax(dim=1)
            results[f"zeroshot/{name}"] = predictions.eq(labels).float().mean().item()
        if data.retrieval_captions:
            flat = [c for caps in data.retrieval_captions for c in caps]
            owner = torch.tensor([i for i, caps in enumerate(data.retrieval_captions) for _ in caps])
            recall = retrieval_metrics(_encode_images(scorer, data.retrieval_images), scorer.encode_texts(flat),
                                       owner, ks=(1, 5))
            results.update({f"retrieval/{k}": v for k, v in recall.items()})
        return results


def build_eval_sets(world: object, transform: Callable, size: int, retrieval_size: int,
                    languages: tuple[str, ...], split: str) -> dict[str, EvalSet]:
    """One ``EvalSet`` per language (``build_eval_set``), in the order given."""
    return {lang: build_eval_set(world, transform, size, retrieval_size, lang, split) for lang in languages}


def evaluate_languages(model: nn.Module, sets: dict[str, EvalSet], text_processor: Callable,
                       device: torch.device) -> dict[str, float]:
    """``evaluate`` on each language's set; the first language's keys are plain, the others' end in ``@<lang>``."""
    results: dict[str, float] = {}
    for i, (language, data) in enumerate(sets.items()):
        metrics = evaluate(model, data, text_processor, device)
        results.update(metrics if i == 0 else {f"{k}@{language}": v for k, v in metrics.items()})
    return results


def similarity_matrix(model: nn.Module, data: EvalSet, text_processor: Callable, device: torch.device,
                      n: int = 8) -> tuple[torch.Tensor, list, list[str]]:
    """Cosine similarities of the first ``n`` retrieval images and their first captions, for the CLIP-style plot."""
    n = min(n, len(data.raw_images))
    captions = [caps[0] for caps in data.retrieval_captions[:n]]
    with eval_mode(model), torch.no_grad():
        scorer = EvalModel(model, transform=lambda image: image, processor=text_processor, device=device)
        similarity = scorer.encode_images(data.retrieval_images[:n]) @ scorer.encode_texts(captions).T
    return similarity, data.raw_images[:n], captions
