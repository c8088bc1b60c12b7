"""Periodic evaluation during training: zero-shot accuracy on the synthetic tasks and caption retrieval.

A minimal scorer kept inside ``train/`` so the loop can report progress; the full evaluation suite
(``clipforge.eval``) is the place for anything beyond that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EvalSet:
    """Pre-transformed evaluation data: zero-shot tasks and a retrieval set.

    Attributes:
        tasks: ``name -> (images (N, 3, H, W), labels (N,), prompts[class][template])``.
        retrieval_images: (M, 3, H, W) images.
        retrieval_captions: ``captions[i]`` are the captions of image ``i``.
        raw_images: The retrieval set's PIL images (for plots).
    """

    tasks: dict[str, tuple[torch.Tensor, torch.Tensor, list[list[str]]]]
    retrieval_images: torch.Tensor
    retrieval_captions: list[list[str]]
    raw_images: list


def build_eval_set(world: object, transform: Callable, size: int, retrieval_size: int, language: str,
                   split: str) -> EvalSet:
    """Renders and transforms the world's zero-shot tasks and retrieval set once."""
    tasks = {}
    for task in world.zeroshot_tasks(size, language=language, split=split):  # type: ignore[attr-defined]
        images = torch.stack([transform(im) for im in task.images])
        prompts = [[t.format(c) for t in task.templates] for c in task.classnames]
        tasks[task.name] = (images, torch.tensor(task.labels), prompts)
    raw, captions = world.retrieval_set(retrieval_size, language=language, split=split)  # type: ignore[attr-defined]
    images = torch.stack([transform(im) for im in raw]) if raw else torch.empty(0)
    return EvalSet(tasks, images, captions, raw)


@torch.no_grad()
def embed_images(model: nn.Module, images: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    """L2-normalised image features (N, D), in float32 on the CPU."""
    out = [model.encode_image(images[i:i + batch].to(device), normalize=True).float().cpu()
           for i in range(0, len(images), batch)]
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: nn.Module, texts: list[str], text_processor: Callable, device: torch.device,
                batch: int = 256) -> torch.Tensor:
    """L2-normalised text features (N, D), in float32 on the CPU."""
    out = [model.encode_text(text_processor(texts[i:i + batch]).to(device), normalize=True).float().cpu()
           for i in range(0, len(texts), batch)]
    return torch.cat(out)


def zeroshot_accuracy(image_features: torch.Tensor, labels: torch.Tensor, class_features: torch.Tensor) -> float:
    """Top-1 accuracy of nearest-class-embedding classification."""
    return (image_features @ class_features.T).argmax(dim=1).eq(labels).float().mean().item()


def class_embeddings(model: nn.Module, prompts: list[list[str]], text_processor: Callable,
                     device: torch.device) -> torch.Tensor:
    """One embedding per class: the normalised mean of its template embeddings (CLIP's prompt ensembling)."""
    flat = [p for per_class in prompts for p in per_class]
    features = embed_texts(model, flat, text_processor, device).view(len(prompts), len(prompts[0]), -1)
    return nn.functional.normalize(features.mean(dim=1), dim=-1)


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, owner: torch.Tensor,
                     ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Recall@k both ways; ``owner[t]`` is the image index of caption ``t``."""
    sim = image_features @ text_features.T  # (images, captions)
    out = {}
    text_rank = sim.argsort(dim=1, descending=True)  # per image: captions best-first
    hits = owner[text_rank] == torch.arange(len(image_features))[:, None]  # (images, captions)
    image_rank = sim.T.argsort(dim=1, descending=True)  # per caption: images best-first
    for k in ks:
        out[f"image_to_text_R@{k}"] = hits[:, :k].any(dim=1).float().mean().item()
        out[f"text_to_image_R@{k}"] = (image_rank[:, :k] == owner[:, None]).any(dim=1).float().mean().item()
    return out


def evaluate(model: nn.Module, data: EvalSet, text_processor: Callable, device: torch.device) -> dict[str, float]:
    """Zero-shot accuracy per task (``zeroshot/<task>``) and retrieval recall (``retrieval/...``).

    Runs the model in eval mode and restores every submodule's previous mode (a locked tower stays in eval).
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        results = {}
        for name, (images, labels, prompts) in data.tasks.items():
            classes = class_embeddings(model, prompts, text_processor, device)
            results[f"zeroshot/{name}"] = zeroshot_accuracy(embed_images(model, images, device), labels, classes)
        if data.retrieval_captions:
            flat = [c for caps in data.retrieval_captions for c in caps]
            owner = torch.tensor([i for i, caps in enumerate(data.retrieval_captions) for _ in caps])
            recall = retrieval_recall(embed_images(model, data.retrieval_images, device),
                                      embed_texts(model, flat, text_processor, device), owner)
            results.update({f"retrieval/{k}": v for k, v in recall.items()})
        return results
    finally:
        for m, mode in modes.items():
            m.training = mode
