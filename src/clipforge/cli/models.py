"""``clipforge models`` (list presets) and ``clipforge demo`` (build a model, embed images and texts)."""

from __future__ import annotations

import argparse

from clipforge.cli.args import verb_parser


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``models`` and ``demo`` verbs."""
    p = verb_parser(sub, "models", help="list the registered model presets")
    p.add_argument("--params", action="store_true", help="also count each preset's parameters (meta device)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--open-clip", action="store_true",
                       help="list OpenCLIP's model names and the clipforge preset each builds")
    names.add_argument("--pretrained", action="store_true",
                       help="list the released checkpoints loadable by name: MODEL:TAG and the hub repository")
    p.set_defaults(func=list_models)

    p = verb_parser(sub, "demo", help="build a model and embed a few synthetic images and captions")
    p.add_argument("--model", default="tiny-vit", help="preset name (default: tiny-vit)")
    p.set_defaults(func=demo)


def list_models(args: argparse.Namespace) -> int:
    """Prints every preset (with parameter counts when asked), OpenCLIP's names, or the pretrained tags."""
    import torch

    from clipforge.api import create_model, list_models
    from clipforge.checkpoints.hub import open_clip_aliases, pretrained_registry

    if args.open_clip:
        for name, alias in sorted(open_clip_aliases().items()):
            print(f"{name:28s} {alias['preset']}")
        return 0
    if args.pretrained:
        for model, tags in pretrained_registry().items():
            for tag, entry in tags.items():
                print(f"{model + ':' + tag:52s} hf-hub:{entry['repo']}")
        return 0
    for name in list_models():
        if args.params:
            with torch.device("meta"):
                n = sum(p.numel() for p in create_model(name).parameters())
            print(f"{name:16s} {n:>15,d}")
        else:
            print(name)
    return 0


def demo(args: argparse.Namespace) -> int:
    """Embeds coloured squares and captions with a random model and prints the similarity matrix."""
    import torch
    from PIL import Image

    from clipforge.api import create_model_and_transforms, get_text_processor

    model, _, eval_tf = create_model_and_transforms(args.model)
    tokenizer = get_text_processor(model)
    colours = ["red", "green", "blue"]
    images = torch.stack([eval_tf(Image.new("RGB", (80, 80), c)) for c in colours])
    texts = tokenizer([f"a photo of a {c} square" for c in colours])
    with torch.no_grad():
        out = model(images, texts)
    sim = out.image_features @ out.text_features.T
    print(f"model {args.model}: image features {tuple(out.image_features.shape)}, "
          f"text features {tuple(out.text_features.shape)}, logit scale {out.logit_scale.item():.2f}")
    print("cosine similarity (random weights; train with `clipforge quickstart`):")
    for c, row in zip(colours, sim.tolist()):
        print(f"  {c:6s}" + "".join(f"{v:8.3f}" for v in row))
    return 0
