"""The distillation teacher: loaded once by ``prepare``, checked against the student's input, run without a graph.

The loss itself is ``clipforge.train.loss.clip_distill_loss`` (OpenCLIP's ``DistillClipLoss``); the loop hands this
rank's teacher features to ``forward_backward`` as a ``Distillation``.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from clipforge.config import ConfigError
from clipforge.models.config import ModelConfig
from clipforge.text import TextProcessor
from clipforge.train.finetune_config import DistillConfig
from clipforge.train.gradcache import Distillation

PRESET_TEACHER_SEED = 0
_PROBE = ["a photo of a dog", "two small red circles on a blue square, and a much longer caption than the first one"]


def load_teacher(distill: DistillConfig) -> tuple[nn.Module, TextProcessor]:
    """The teacher model (on the CPU, eval mode, frozen) and its text processor.

    A preset teacher's random weights are drawn from ``PRESET_TEACHER_SEED``, not from the global RNG: every rank of
    a distributed run, and a run resumed in another process (or after other work in this one), gets the same teacher.

    Raises:
        ConfigError: ``distill.teacher`` is neither a preset nor anything ``clipforge.load`` opens.
    """
    from clipforge.api import create_model, get_text_processor, load
    from clipforge.models.presets import list_presets

    name = str(distill.teacher)
    try:
        if name in list_presets() and not Path(name).exists():
            with torch.random.fork_rng(devices=[]):  # the same weights in every process, and the caller's RNG kept
                torch.manual_seed(PRESET_TEACHER_SEED)
                model: nn.Module = create_model(name)
            processor = get_text_processor(model)
        else:
            model, _, processor = load(name, allow_pickle=distill.allow_pickle)
    except (ValueError, OSError) as e:  # CheckpointError and ConfigError are ValueErrors; a missing file: OSError
        raise ConfigError(f"distill.teacher: {e}") from None
    model = model.cpu().eval()
    model.requires_grad_(False)
    return model, processor


def check_teacher(student: ModelConfig, student_text: TextProcessor, teacher: nn.Module,
                  teacher_text: TextProcessor) -> None:
    """Raises ``ConfigError`` unless the teacher takes the student's batches as they are: the same image size and
    normalisation, and the same text input for the same strings (embedding widths may differ)."""
    t = teacher.config  # type: ignore[union-attr]
    for field in ("mean", "std"):
        if tuple(getattr(t, field)) != tuple(getattr(student, field)):
            raise ConfigError(f"distill.teacher normalises images with {field}={getattr(t, field)}, the student with "
                              f"{getattr(student, field)}: the teacher must take the student's images")
    if t.vision.image_size != student.vision.image_size:
        raise ConfigError(f"distill.teacher takes {t.vision.image_size}-px images, the student "
                          f"{student.vision.image_size}-px: resize one (clipforge convert --image-size)")
    ours, theirs = student_text(_PROBE), teacher_text(_PROBE)
    if ours.shape != theirs.shape or not torch.equal(ours, theirs):
        raise ConfigError("distill.teacher's text processor turns the same captions into other input than the "
                          f"student's ({tuple(theirs.shape)} vs {tuple(ours.shape)}): the teacher must share the "
                          "student's tokenizer and context length (or renderer)")


@torch.no_grad()
def teacher_features(teacher: nn.Module, images: torch.Tensor, texts: torch.Tensor, distill: DistillConfig,
                     chunks: int = 1, autocast: torch.dtype | None = None) -> Distillation:
    """The teacher's L2-normalised features of this rank's batch, in ``chunks`` pieces (as gradient caching splits
    it, so the teacher never holds more activations than a micro-batch), with its logit scale."""
    amp = torch.autocast(images.device.type, dtype=autocast) if autocast is not None else nullcontext()
    image_parts, text_parts = [], []
    with amp:
        for chunk_images, chunk_texts in zip(images.chunk(chunks), texts.chunk(chunks)):
            image_parts.append(teacher.encode_image(chunk_images, normalize=True))  # type: ignore[operator]
            text_parts.append(teacher.encode_text(chunk_texts, normalize=True))  # type: ignore[operator]
    scale = teacher.scale()  # type: ignore[operator]
    return Distillation(torch.cat(image_parts), torch.cat(text_parts), scale, distill.weight, distill.form)
