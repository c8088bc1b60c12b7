"""The tiny ViT CLIP that training tests build from the ``tiny-vit`` preset: dotted ``model_overrides`` for
``load_config`` / ``parse_overrides`` (32-px images in 8-px patches, a 16-token context, one block per tower unless
asked)."""

from __future__ import annotations

from pathlib import Path

import torch

from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.metrics import read_metrics


def tiny_vit_overrides(width: int = 32, vision_layers: int = 1, text_layers: int = 1,
                       context_length: int = 16) -> list[str]:
    """``model_overrides.*`` items for a ViT CLIP of ``width`` (also its embedding width) with two heads a block."""
    return [f"model_overrides.embed_dim={width}", "model_overrides.vision.image_size=32",
            "model_overrides.vision.patch_size=8", f"model_overrides.vision.width={width}",
            f"model_overrides.vision.layers={vision_layers}", "model_overrides.vision.heads=2",
            f"model_overrides.text.width={width}", "model_overrides.text.heads=2",
            f"model_overrides.text.layers={text_layers}", f"model_overrides.text.context_length={context_length}"]


TINY_TEXT = {"width": 32, "heads": 2, "layers": 2, "context_length": 40}  # a text tower of a few ms


def padded_tokens(lengths: list[int], context: int, vocab: int, eot: int, *, pad: int = 0,
                  low: int = 1, high: int | None = None, seed: int = 0) -> torch.Tensor:
    """(B, context) ids: a start token, random ids, end-of-text at ``length - 1``, then ``pad``."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(lengths), context), pad, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens[row, :length] = torch.randint(low, high or eot, (length,), generator=g)
        tokens[row, length - 1] = eot
    return tokens


# Four fp32 steps on the synthetic world with a 32-token context: the text-trimming tests' run.
TEXT_RUN = [*tiny_vit_overrides(text_layers=2, context_length=32), "data.train_size=200", "data.num_workers=0",
            "eval.size=16", "eval.retrieval_size=8", "schedule.warmup_steps=2", "log_every=1", "steps=4",
            "batch_size=8", "precision=fp32", "plots=false"]


def text_run_losses(tmp_path: Path, name: str, *extra: str) -> list[float]:
    """``TEXT_RUN`` with ``extra`` overrides, trained in ``tmp_path / name``: the logged step losses."""
    config = load_config(None, parse_overrides([*TEXT_RUN, *extra, f"output_dir={tmp_path / name}"]))
    train(config, Runtime())
    return [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]
