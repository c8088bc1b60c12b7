"""``clipforge merge A B OUT --alpha 0.5``: WiSE-FT, a thin layer over ``clipforge.checkpoints.merge``.

Examples::

    clipforge merge ViT-B-32:laion2b_s34b_b79k runs/finetune/final wise-0.5 --alpha 0.5
    clipforge merge runs/zero-shot/final runs/finetune/final wise-0.3 --alpha 0.3 --overwrite

A and B are anything ``clipforge.load`` opens (a model directory, a checkpoint, ``hf-hub:org/repo``, ``NAME:TAG``) and
must have one architecture (else an error names the first config field or tensor that differs). OUT, a clipforge
model directory, gets every float tensor as ``(1 - alpha)·A + alpha·B`` and A's text processor. OUT must not exist
(an empty folder is fine) unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse

from clipforge.cli.args import ACTIVATIONS, verb_parser


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``merge`` verb."""
    p = verb_parser(sub, "merge", help="interpolate two models of one architecture weight by weight (WiSE-FT)",
                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="the first model (WiSE-FT: the zero-shot one): a model directory, checkpoint, "
                             "hf-hub:ORG/REPO[@REV] or NAME:TAG")
    p.add_argument("b", help="the second model, of the same architecture (WiSE-FT: the fine-tune)")
    p.add_argument("out", help="the clipforge model directory to write")
    p.add_argument("--alpha", type=_alpha, required=True, help="B's weight in [0, 1]: 0 gives A, 1 gives B")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow reading pickled .bin/.pt checkpoints (torch.load with weights_only=True)")
    p.add_argument("--act", choices=ACTIVATIONS, default=None,
                   help="MLP activation of OpenAI/open_clip checkpoints (their files do not record it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Merges ``args.a`` and ``args.b`` into ``args.out`` and prints what was written."""
    from clipforge.checkpoints.merge import merge_checkpoints

    extra = {"act": args.act} if args.act else {}
    out = merge_checkpoints(args.a, args.b, args.out, args.alpha, overwrite=args.overwrite,
                            allow_pickle=args.allow_pickle, **extra)
    print(f"wrote {out} ((1 - {args.alpha:g})·A + {args.alpha:g}·B)")
    return 0
