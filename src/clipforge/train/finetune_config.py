"""The fine-tuning sub-configs of ``TrainConfig``: partial unlocking (``unlock:``) and distillation (``distill:``).

Kept beside ``clipforge.train.config`` (which only references them) so that the run config stays one readable
file. Both are inert data validated on load; the model they act on is checked by ``clipforge.train.prepare``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clipforge.config import ConfigError


@dataclass(frozen=True)
class UnlockConfig:
    """Partial unlocking: train only the last blocks of a tower, optionally the whole tower from a given step.

    A tower's layers are numbered as for layer-wise decay (``clipforge.train.layers``): its embeddings are layer
    0, its blocks (a ViT's or text transformer's blocks, a ResNet's four stages) 1..L, and its head (final norm,
    pooling head, projection) L + 1. ``image_blocks: N`` trains layers L − N + 1 .. L + 1 of the image tower (the
    last N blocks and the head; 0 trains the head alone, L + 1 everything) and freezes the rest: no gradient,
    eval mode, as ``lock`` does for a whole tower (OpenCLIP's ``--lock-image-unlocked-groups``, counted in
    blocks). CLIPPO's one tower follows ``image_blocks``.

    Attributes:
        image_blocks: Trainable blocks of the image tower; ``None`` trains it all (or as ``lock`` says).
        text_blocks: Likewise for the text tower.
        at_step: From this optimiser step on (0-based), the partially frozen towers train whole; ``None``: never.
            Which parameters train is a function of the step alone, so a run resumed across ``at_step`` takes the
            same steps as an uninterrupted one.
    """

    image_blocks: int | None = None
    text_blocks: int | None = None
    at_step: int | None = None

    def __post_init__(self) -> None:
        for name in ("image_blocks", "text_blocks"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"unlock.{name} must be >= 0 (the number of trainable last blocks) or null, "
                                  f"got {value}")
        if self.at_step is not None:
            if self.at_step <= 0:
                raise ConfigError(f"unlock.at_step must be a positive step or null, got {self.at_step}")
            if self.image_blocks is None and self.text_blocks is None:
                raise ConfigError("unlock.at_step unlocks partially frozen towers: set unlock.image_blocks or "
                                  "unlock.text_blocks too")

    def blocks(self, tower: str) -> int | None:
        """The trainable block count of ``tower`` (``image`` or ``text``), ``None`` when it trains whole."""
        return self.image_blocks if tower == "image" else self.text_blocks


@dataclass(frozen=True)
class DistillConfig:
    """Distillation from a teacher (OpenCLIP's ``--distill-model``): the contrastive loss plus ``weight`` × the
    cross-entropy between the teacher's and the student's image→text and text→image softmax distributions.

    Only logits are compared, so the teacher's embedding width may differ from the student's; it must take the
    same input (image size, normalisation, text processor), which ``prepare`` checks.

    Attributes:
        teacher: ``null`` (no distillation), or anything ``clipforge.load`` opens: a clipforge model directory, a
            checkpoint file or directory ``clipforge convert`` reads, a released name (``hf-hub:org/repo``,
            ``NAME:TAG``), or a preset (random weights: for tests).
        allow_pickle: Let ``teacher`` be a pickled checkpoint (``.pt``/``.bin``, read with ``weights_only``).
        weight: The distillation term's weight (OpenCLIP: 1).
        form: ``kl``: KL(teacher ‖ student), 0 when the student matches the teacher; ``cross_entropy``: OpenCLIP's
            ``DistillClipLoss`` value, which is the KL plus the teacher's entropy. The two have the same gradient.
    """

    teacher: str | None = None
    allow_pickle: bool = False
    weight: float = 1.0
    form: Literal["kl", "cross_entropy"] = "kl"

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ConfigError(f"distill.weight must be positive, got {self.weight}")
        if self.teacher is not None and not self.teacher.strip():
            raise ConfigError("distill.teacher: expected a model (directory, checkpoint, released name or preset) "
                              "or null, got an empty string")
