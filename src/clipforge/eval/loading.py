"""Opening any model spelling (a saved model, a checkpoint, a hub name, ``NAME:TAG``, a bare preset) as an
``EvalModel``: one function shared by the evaluation, classification, embedding and search verbs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def load_eval_model(spec: str, device: str | None = None, allow_pickle: bool = False,
                    act: str | None = None, pretrained: str | None = None) -> tuple[Any, str, str]:
    """Opens ``spec`` as ``(EvalModel, model name, pretrained)``.

    ``spec`` is a saved model path, an ``hf-hub:org/repo[@revision]`` name, a model name (preset or OpenCLIP) with
    ``pretrained`` (an OpenCLIP tag or a weights file) or spelled ``NAME:TAG``, or a model name alone (randomly
    initialised weights). ``allow_pickle`` lets the weights be a pickled checkpoint (read with
    ``torch.load(weights_only=True)``); ``act`` is the MLP activation of an OpenAI/open_clip checkpoint (see
    ``clipforge.checkpoints.load_any``).

    Raises:
        FileNotFoundError: When ``spec`` is neither an existing path nor a known name.
    """
    import torch

    from clipforge.api import create_model_and_transforms, get_text_processor, load
    from clipforge.checkpoints.hub import close_matches, is_hub_name, known_model_names, split_tag
    from clipforge.eval.adapter import EvalModel, describe

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extra = {"act": act} if act else {}  # a clipforge model directory records its activation
    name, tag = split_tag(spec, pretrained) if not os.path.exists(spec) else (spec, pretrained)
    if is_hub_name(name) or tag is not None:
        model, transform, processor = load(name, device=device, pretrained=tag, allow_pickle=allow_pickle, **extra)
        return EvalModel(model, transform, processor, device), name, tag or name
    if os.path.exists(spec):
        model, transform, processor = load(spec, device=device, allow_pickle=allow_pickle, **extra)
        pretrained = str(spec)
    elif spec in known_model_names():
        model, _, transform = create_model_and_transforms(spec, device=device)
        processor = get_text_processor(model)
        pretrained = "random"
        print(f"note: {spec!r} is a model name without --pretrained; evaluating randomly initialised weights",
              file=sys.stderr)
    else:
        raise FileNotFoundError(f"model not found: {spec!r} is neither a saved model path nor a model name"
                                f"{close_matches(spec, known_model_names())} (see `clipforge models`)")
    # CLIP_benchmark's "model" is the architecture; a saved model without a named config goes by its folder.
    name = spec if pretrained == "random" else describe(model)
    if name == type(model).__name__:
        name = Path(spec).name
    return EvalModel(model, transform, processor, device), name, pretrained
