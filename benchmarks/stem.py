"""ViT stem benchmark: how fast a tower learns to see shape, supervised, with each stem.

Trains a model's image tower plus a linear head on the synthetic world's shape labels (8 classes, batch 64,
AdamW at lr 5e-4 after 20 warm-up steps, one CPU thread each) and prints JSON with the validation accuracy
(200 images) every ``--every`` steps and the time per step, for the patch stem, the conv stem without its
GroupNorms, and the conv stem as shipped. Supervised shape learning is the lower bound on how fast a
contrastive run can learn shape from the same tower.

    python benchmarks/stem.py                            # clippo-tiny, 300 steps
    python benchmarks/stem.py --model tiny-vit --steps 150
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import clipforge
from clipforge.data.synthetic import SHAPES, SyntheticWorld, WorldConfig


def variants(name: str) -> dict[str, nn.Module]:
    """Name → a fresh model: patch stem, conv stem without GroupNorm, conv stem."""
    torch.manual_seed(0)
    patch = clipforge.create_model(name, vision={"stem": "patch"})
    torch.manual_seed(0)
    bare = clipforge.create_model(name, vision={"stem": "conv"})
    bare.visual.stem = nn.Sequential(*[m for m in bare.visual.stem if not isinstance(m, nn.GroupNorm)])
    torch.manual_seed(0)
    conv = clipforge.create_model(name, vision={"stem": "conv"})
    return {"patch": patch, "conv without GroupNorm": bare, "conv": conv}


def run(model: nn.Module, steps: int, every: int, lr: float = 5e-4, batch: int = 64) -> dict:
    _, transform = clipforge.transforms.model_transforms(model.config)
    world = SyntheticWorld(WorldConfig(image_size=model.config.vision.image_size))
    val = [world.sample("val", i) for i in range(200)]
    val_x = torch.stack([transform(s.image) for s in val])
    val_y = torch.tensor([SHAPES.index(s.attributes["shape"]) for s in val])
    head = nn.Linear(model.config.embed_dim, len(SHAPES))
    params = list(model.visual.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr, weight_decay=0.1)
    curve, train_time = {}, 0.0
    for step in range(steps):
        samples = [world.sample("train", step * batch + i) for i in range(batch)]
        x = torch.stack([transform(s.image) for s in samples])
        y = torch.tensor([SHAPES.index(s.attributes["shape"]) for s in samples])
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20)
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(head(model.encode_image(x)), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        train_time += time.perf_counter() - start
        if (step + 1) % every == 0:
            model.eval()
            with torch.no_grad():
                curve[step + 1] = round((head(model.encode_image(val_x)).argmax(1) == val_y).float().mean().item(), 3)
            model.train()
    return {"val_accuracy": curve, "ms_per_step": round(1000 * train_time / steps, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="clippo-tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {name: run(model, args.steps, args.every) for name, model in variants(args.model).items()}
    print(json.dumps({"benchmark": "stem", "model": args.model, "steps": args.steps, "batch_size": 64,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
