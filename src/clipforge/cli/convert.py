"""``clipforge convert SRC DST --to FORMAT``: a thin layer over ``clipforge.checkpoints.convert``.

Examples::

    clipforge convert ViT-B-32.pt vit-b-32 --to clipforge            # OpenAI TorchScript, read without running it
    clipforge convert open_clip_pytorch_model.bin out --to clipforge --allow-pickle --act gelu
    clipforge convert runs/tiny/model hf-tiny --to hf                # then transformers.CLIPModel.from_pretrained
    clipforge convert runs/tiny/model tiny.safetensors --to open_clip
"""

from __future__ import annotations

import argparse

from clipforge.checkpoints import EXPORT_FORMATS, FORMATS


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``convert`` verb."""
    p = sub.add_parser("convert", help="convert a checkpoint between clipforge, OpenAI, open_clip, HF and big_vision",
                       description="Reads SRC (format detected unless --from names it), writes DST in --to's format.")
    p.add_argument("src", help="checkpoint file or directory to read")
    p.add_argument("dst", help="file or directory to write")
    p.add_argument("--to", required=True, choices=EXPORT_FORMATS, help="output format")
    p.add_argument("--from", dest="src_format", choices=FORMATS, default=None,
                   help="input format (default: detected)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow reading pickled .bin/.pt files (torch.load with weights_only=True)")
    p.add_argument("--allow-jit", action="store_true",
                   help="read TorchScript archives with torch.jit.load, which runs the code inside them")
    p.add_argument("--act", choices=("quick_gelu", "gelu", "gelu_tanh"), default=None,
                   help="MLP activation of an OpenAI/open_clip input (their files do not record it; OpenAI: "
                        "quick_gelu; open_clip: from open_clip_config.json, else guessed from the shape)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Converts ``args.src`` to ``args.dst`` and prints what was written."""
    from clipforge.checkpoints import convert

    written = convert(args.src, args.dst, to=args.to, src_format=args.src_format, allow_pickle=args.allow_pickle,
                      allow_jit=args.allow_jit, act=args.act)
    print(f"wrote {written} ({args.to})")
    return 0
