"""Cross-entropy fine-tuning with a zero-shot-initialised head: the baseline WiSE-FT and FLYP compare against.

A ``classifier:`` run trains the image tower and a linear head on class labels with cross-entropy. The head
``W`` (classes × embedding width) acts on L2-normalised image features, ``logits = normalize(f) · Wᵀ``, and starts
as the model's zero-shot classifier scaled by its logit scale: row ``c`` is ``scale · normalize(mean_t
normalize(text(template_t(class_c))))``, exactly the classifier ``clipforge eval`` builds (Wortsman et al. 2022's
``ClassificationHead``; it has no bias here, so at step 0 the head's predictions are the zero-shot ones). The text
tower only builds that start: it is frozen and never run in the loop. ``lock: image`` trains the head alone (a
zero-shot-initialised linear probe).

The head lives on the model as ``model.classifier`` while it trains (so the optimiser, checkpoints, resume and the
WiSE-FT sweep see it as any other weight), and is saved beside the model: ``final/`` is an ordinary model directory
(the fine-tuned image tower, the untouched text tower) and ``final/classifier/`` holds ``classifier.safetensors``
(``weight``) and ``classifier.json`` (class names, templates, init). ``load_classifier`` reads both back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import ConfigError

HEAD_DIR = "classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    """Cross-entropy fine-tuning on class labels with a linear head (``classifier:``).

    The data must name labels (``data.layout: classes`` or a table's ``data.label_key``); the class order is the
    data's (sorted folders; a table's label indices or sorted label names), as for ``data.captions_from_labels``.

    Attributes:
        templates: The prompts that build the zero-shot start: a built-in set (``imagenet``, ``cifar10``,
            ``cifar100``, ``siglip``), a ``.txt``/``.json`` file or a list of templates holding ``{}``.
        classnames: The class names put in the prompts, in class order (a list, a file or a built-in set);
            ``None``: a folder's names with underscores as spaces, or a table's label names.
        init: ``zeroshot`` (the scaled zero-shot classifier) or ``zeros`` (a head learnt from nothing: with it the
            step-0 loss is log(classes)).
        label_smoothing: ``F.cross_entropy``'s label smoothing.
    """

    templates: str | tuple[str, ...] = "imagenet"
    classnames: str | tuple[str, ...] | None = None
    init: Literal["zeroshot", "zeros"] = "zeroshot"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not self.templates:
            raise ConfigError("classifier.templates: expected a template set, a file or a non-empty list")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"classifier.label_smoothing must lie in [0, 1), got {self.label_smoothing}")


class ClassifierHead(nn.Module):
    """``logits = normalize(features) · weightᵀ``: a linear head on L2-normalised image features.

    Args:
        weight: ``(classes, width)``; a zero-shot start is the classifier scaled by the model's logit scale.
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=-1) @ self.weight.T

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])


def zero_shot_head(model: nn.Module, classnames: Sequence[str], templates: Sequence[str], transform: Callable,
                   text_processor: Callable, device: torch.device, init: str = "zeroshot") -> ClassifierHead:
    """A head for ``classnames``: the model's zero-shot classifier times its logit scale, or zeros.

    Args:
        model: A CLIP-family model (its text tower embeds the prompts; its modes are restored).
        classnames: One name per class, in label order.
        templates: Prompt templates holding ``{}``.
        transform: The model's eval transform (unused by the text side; ``EvalModel`` holds it).
        text_processor: The model's tokenizer or renderer.
        device: Where the text tower runs.
        init: ``zeroshot`` or ``zeros``.
    """
    from clipforge.eval import EvalModel
    from clipforge.eval.zeroshot import build_classifier
    from clipforge.train.evaluate import eval_mode

    if init == "zeros":
        return ClassifierHead(torch.zeros(len(classnames), model.config.embed_dim))
    with eval_mode(model), torch.no_grad():
        weights = build_classifier(EvalModel(model, transform, text_processor, device), classnames, templates,
                                   use_cache=False)  # (D, C), columns unit-norm
        scale = model.scale().float().cpu()
    return ClassifierHead(scale * weights.T)


def attach_head(model: nn.Module, head: ClassifierHead) -> None:
    """Puts ``head`` on ``model`` as ``model.classifier`` (on the model's device) and freezes the text tower."""
    towers = model.towers()
    if towers["image"] is towers["text"]:
        raise ConfigError("classifier: CLIPPO's one tower is both the image and the text tower; cross-entropy "
                          "fine-tuning would train the text side too: fine-tune it with data.captions_from_labels")
    towers["text"].requires_grad_(False)
    device = next(model.parameters()).device
    model.add_module(HEAD_DIR, head.to(device))


def head_of(model: nn.Module) -> ClassifierHead | None:
    """The head a ``classifier`` run attached, or ``None``."""
    head = getattr(model, HEAD_DIR, None)
    return head if isinstance(head, ClassifierHead) else None


def classifier_forward_backward(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, accum_steps: int,
                                autocast: torch.dtype | None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over this rank's batch in ``accum_steps`` micro-batches; gradients accumulate; returns the
    batch's mean loss (detached). Samples are independent, so micro-batching changes nothing but memory."""
    head = head_of(model)
    assert head is not None, "a classifier run attaches model.classifier before the loop"
    total = torch.zeros((), device=images.device)
    n = images.shape[0]
    for chunk, targets in zip(images.chunk(accum_steps), labels.chunk(accum_steps), strict=True):
        with torch.autocast(images.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            features = model.encode_image(chunk)
        logits = head(features)
        loss = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=label_smoothing) / n
        loss.backward()
        total += loss.detach()
    return total


def labels_to_tensor(labels: Sequence[str]) -> torch.Tensor:
    """The batch builder's "text processor" of a classifier run: the samples' class indices as a ``long`` tensor."""
    return torch.tensor([int(label) for label in labels], dtype=torch.long)


def save_head(head: ClassifierHead, directory: str | Path, classnames: Sequence[str],
              meta: dict[str, Any] | None = None) -> Path:
    """Writes ``directory/classifier.safetensors`` (``weight``) and ``classifier.json`` (class names and ``meta``)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"weight": head.weight.detach().float().cpu().contiguous()}, str(out / "classifier.safetensors"))
    info = {"classnames": list(classnames), "num_classes": head.num_classes, "width": int(head.weight.shape[1]),
            "logits": "normalize(image_features) @ weight.T", **(meta or {})}
    (out / "classifier.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def save_with_head(model: nn.Module, directory: str | Path, text_processor: Any,
                   save: Callable[[nn.Module, Path, Any], Any], classnames: Sequence[str] | None = None,
                   meta: dict[str, Any] | None = None) -> Path:
    """Saves ``model`` with ``save(model, directory, text_processor)``, its head (if any) left out of the model
    files and written to ``directory/classifier/``."""
    out = Path(directory)
    head = head_of(model)
    if head is None:
        save(model, out, text_processor)
        return out
    delattr(model, HEAD_DIR)
    try:
        save(model, out, text_processor)
    finally:
        model.add_module(HEAD_DIR, head)
    names = classnames if classnames is not None else getattr(head, "classnames", None)
    save_head(head, out / HEAD_DIR, names or [str(i) for i in range(head.num_classes)],
              meta if meta is not None else getattr(head, "meta", None))
    return out


def read_head(path: str | Path) -> tuple[ClassifierHead, list[str]]:
    """A saved head and its class names: ``path`` is a ``classifier/`` folder or a model directory holding one.

    Raises:
        FileNotFoundError: there is no ``classifier.safetensors`` there.
        ValueError: ``classifier.json`` is missing or names another count of classes than the weight has.
    """
    from safetensors.torch import load_file

    where = Path(path)
    if not (where / "classifier.safetensors").is_file() and (where / HEAD_DIR).is_dir():
        where = where / HEAD_DIR
    if not (where / "classifier.safetensors").is_file():
        raise FileNotFoundError(f"{where}: no classifier.safetensors (is {path} a classifier run's model?)")
    try:
        info = json.loads((where / "classifier.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{where / 'classifier.json'}: unreadable ({e})") from None
    head = ClassifierHead(load_file(str(where / "classifier.safetensors"))["weight"])
    names = info.get("classnames")
    if not isinstance(names, list) or len(names) != head.num_classes:
        raise ValueError(f"{where / 'classifier.json'}: classnames must list the head's {head.num_classes} classes")
    return head, [str(n) for n in names]


def load_classifier(directory: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, ClassifierHead, list[str], Callable, Any]:
    """A classifier run's ``final/`` (or ``final_wise/``): ``(model, head, classnames, eval_transform, tokenizer)``.

    ``head(model.encode_image(eval_transform(image)[None]))`` are the class logits.

    Raises:
        FileNotFoundError: ``directory/classifier/`` is missing (not a classifier run's model).
        ValueError: the head's width does not match the model's embedding.
    """
    from clipforge.api import load

    head, classnames = read_head(Path(directory) / HEAD_DIR)
    model, eval_tf, tokenizer = load(str(directory), device=device)
    if head.weight.shape[1] != model.config.embed_dim:
        raise ValueError(f"{directory}: the head's width {head.weight.shape[1]} does not match the model's "
                         f"embedding width {model.config.embed_dim}")
    return model, head.to(device), classnames, eval_tf, tokenizer
