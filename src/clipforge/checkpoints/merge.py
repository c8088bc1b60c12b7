"""WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): weight-space interpolation of two models
of one architecture, θ = (1 − α)·θ_A + α·θ_B.

With A the zero-shot model and B its fine-tune, α between 0 and 1 trades what the fine-tune gained on its task
against what the zero-shot model knew (section 3 of the paper: the interpolated models often beat both ends on
distribution shifts). Every floating-point tensor is interpolated, the logit scale and bias included, and
BatchNorm's running statistics with them; integer tensors must be equal (BatchNorm's step counter excepted, which
only a ``momentum=None`` BatchNorm reads: A's is kept).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from clipforge.config import to_dict

if TYPE_CHECKING:
    from clipforge.models.clip import CLIP
    from clipforge.models.clippo import CLIPPO

# Config fields that only shape a fresh initialisation or training, not what a loaded model computes.
TRAINING_ONLY = ("init_logit_scale", "init_logit_bias", "init_gain", "patch_dropout")


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_same_architecture(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Raises ``ValueError`` naming the first config field, tensor name or shape in which ``a`` and ``b`` differ.

    Fields that only matter to a fresh initialisation or to training (``TRAINING_ONLY``) may differ.
    """
    config_a = _flat(to_dict(a.config))
    config_b = _flat(to_dict(b.config))
    for key in sorted(set(config_a) | set(config_b)):
        if key.split(".")[-1] in TRAINING_ONLY:
            continue
        if config_a.get(key, "<absent>") != config_b.get(key, "<absent>"):
            raise ValueError(f"the models differ in config field {key!r}: {config_a.get(key, '<absent>')!r} in A, "
                             f"{config_b.get(key, '<absent>')!r} in B; only models of one architecture can be merged")
    state_a, state_b = a.state_dict(), b.state_dict()
    for name in state_a:
        if name not in state_b:
            raise ValueError(f"parameter {name!r} is in A but not in B; only models of one architecture can be merged")
        if state_a[name].shape != state_b[name].shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(state_a[name].shape)} in A and "
                             f"{tuple(state_b[name].shape)} in B; only models of one architecture can be merged")
    extra = sorted(set(state_b) - set(state_a))
    if extra:
        raise ValueError(f"parameter {extra[0]!r} is in B but not in A; only models of one architecture can be merged")


def merge_models(a: CLIP | CLIPPO, b: CLIP | CLIPPO, alpha: float) -> CLIP | CLIPPO:
    """A new model (A's config, on A's device and in A's dtype) with every float tensor ``(1 − α)·A + α·B``.

    The interpolation runs in float32 with ``torch.lerp``, exact at both ends: ``alpha=0`` gives A's tensors and
    ``alpha=1`` B's, bit for bit. The inputs are not modified.

    Args:
        a: The first model (WiSE-FT: the zero-shot one).
        b: The second model, of the same architecture (WiSE-FT: the fine-tuned one).
        alpha: B's weight, in [0, 1].

    Raises:
        ValueError: ``alpha`` is outside [0, 1]; the architectures differ (naming the first config field or tensor
            that differs); an integer tensor differs between A and B.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1] (B's weight), got {alpha!r}")
    check_same_architecture(a, b)
    state_a, state_b = a.state_dict(), b.state_dict()
    merged: dict[str, torch.Tensor] = {}
    for name, ta in state_a.items():
        tb = state_b[name].to(ta.device)
        if ta.is_floating_point():
            merged[name] = torch.lerp(ta.float(), tb.float(), float(alpha)).to(ta.dtype)
        elif name.endswith("num_batches_tracked"):  # BatchNorm's step counter: read only with momentum=None
            merged[name] = ta.clone()
        elif not torch.equal(ta, tb):
            raise ValueError(f"integer tensor {name!r} differs between A and B; it cannot be interpolated")
        else:
            merged[name] = ta.clone()
    model = copy.deepcopy(a)
    model.load_state_dict(merged)
    return model


def merge_checkpoints(path_a: str | Path, path_b: str | Path, out: str | Path, alpha: float,
                      overwrite: bool = False, **load_kwargs: Any) -> Path:
    """Merges two checkpoints (anything ``clipforge.load`` opens) into a clipforge model directory ``out``.

    The merged model is saved with A's text processor (its vocabulary or SentencePiece file travels with it).

    Args:
        path_a: The first checkpoint (WiSE-FT: the zero-shot model).
        path_b: The second checkpoint (WiSE-FT: the fine-tune).
        out: The model directory to write; it must not exist, or be empty, unless ``overwrite``.
        alpha: B's weight, in [0, 1].
        overwrite: Replace the model files of an existing ``out`` (other files there stay).
        **load_kwargs: Passed to ``clipforge.load`` for both inputs (``allow_pickle=True``, ``act=``, ``pretrained=``
            is not accepted: spell released weights ``NAME:TAG``).

    Returns:
        ``out``.

    Raises:
        ValueError: ``out`` is A, B or a folder holding either, or exists without ``overwrite``; see
            ``merge_models``.
    """
    from clipforge.api import load
    from clipforge.checkpoints.native import save_pretrained

    target = Path(out).resolve()
    for source in (path_a, path_b):
        resolved = Path(source).resolve()
        if target == resolved or target in resolved.parents:
            raise ValueError(f"OUT {str(out)!r} is {str(source)!r} or a folder holding it; merging would overwrite "
                             "an input")
    if target.exists() and not (target.is_dir() and not any(target.iterdir())) and not overwrite:
        raise ValueError(f"OUT {str(out)!r} exists; pass overwrite=True (--overwrite) to replace it, or choose a new "
                         "path")
    model_a, _, processor = load(path_a, device="cpu", **load_kwargs)
    model_b, _, _ = load(path_b, device="cpu", **load_kwargs)
    merged = merge_models(model_a, model_b, alpha)
    return save_pretrained(merged, out, processor)
