"""``clipforge eval typographic``: zero-shot accuracy clean vs with a label word written on every image.

Examples::

    clipforge eval typographic --model runs/quickstart/final --data synthetic:shape --word other --output t.json
    clipforge eval typographic --model runs/x/final --data photos/ --word iPod --font DejaVuSans.ttf --size 0.2

``--word`` is ``other`` (another class's name per image, drawn with ``--seed``), ``own`` (the true class's name: a
control) or a word written on every image (added as an extra class when it is not one of the classes). ``--data`` is
what ``clipforge eval zeroshot`` reads, or ``synthetic:TASK`` (``shape``, ``colour``, ``count``, ``composition``:
the synthetic world's zero-shot task, drawn at the model's input size; no files needed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from clipforge.cli.args import non_negative_int, positive_int, real_number, whole_number
from clipforge.cli.eval import _cache_root, _common, _finish, _open
from clipforge.eval.tasks import DEFAULT_TEMPLATES

if TYPE_CHECKING:
    from clipforge.eval.typographic import TypographicAttack


def register(tasks: argparse._SubParsersAction) -> None:
    """Adds the ``typographic`` task to the ``eval`` verb's sub-parsers."""
    from clipforge.eval.typographic import FONTS, POSITIONS

    p = tasks.add_parser("typographic", help="typographic attack: accuracy clean vs with a word written on images",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--label-key", "--label-col", dest="label_key", default=None,
                   help="table column of labels (index or class name; default: label)")
    p.add_argument("--classnames", default=None,
                   help="class names: imagenet, cifar10, cifar100, or a .txt/.json file (default: the dataset's)")
    p.add_argument("--templates", default=None,
                   help="prompt templates: a built-in set or a .txt/.json file "
                        f"(default: the dataset's, else {DEFAULT_TEMPLATES})")
    p.add_argument("--word", default="other",
                   help="other (another class's name per image; default), own (the true class's name), or a word "
                        "to write on every image (an extra class when not one of the classes)")
    p.add_argument("--position", choices=POSITIONS, default="center", help="where the label goes (default: center)")
    p.add_argument("--size", type=real_number(0, 1, high_open=False), default=0.25,
                   help="the label's height as a fraction of the image height, in (0, 1] (default: 0.25)")
    p.add_argument("--text-colour", default="black", help="colour of the letters: a name or #rrggbb (default: black)")
    p.add_argument("--box-colour", default="white",
                   help="colour of the box behind the letters, or none (default: white)")
    p.add_argument("--font", default="unifont",
                   help=f"{' or '.join(FONTS)} (CLIPPO's Unifont renderer; PIL's default font) or a font file PIL "
                        "reads (.ttf, .otf, ...) (default: unifont)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the other-class draw and random positions, ≥ 0 (default: 0)")
    p.add_argument("--examples", type=whole_number(0, 32), default=8,
                   help="clean/attacked pairs in the picture, 0..32 (default: 8; 0: no picture)")
    p.add_argument("--examples-png", default=None, metavar="PNG",
                   help="the picture's path (default: beside --output as *_examples.png)")
    p.add_argument("--synthetic-size", type=positive_int, default=500,
                   help="images of a synthetic:TASK --data, ≥ 1 (default: 500)")
    p.add_argument("--synthetic-seed", type=non_negative_int, default=0,
                   help="the world's seed of a synthetic:TASK --data (default: 0, the quickstart's)")
    p.add_argument("--no-classifier-cache", action="store_true", help="rebuild the zero-shot classifier")
    p.set_defaults(func=run_typographic)


def _attack(args: argparse.Namespace) -> TypographicAttack:
    """The attack of the flags; a bad value is an error naming its flag."""
    from clipforge.eval.typographic import TypographicAttack, parse_colour

    try:
        text = parse_colour(args.text_colour, "text_colour")
        if text is None:
            raise ValueError("text_colour: the letters need a colour (none is for --box-colour)")
        return TypographicAttack(args.word, args.position, args.size, text, parse_colour(args.box_colour, "box_colour"),
                                 args.font, args.seed)
    except ValueError as e:  # the API names the field (``font: ...``); the command line names the flag
        field, _, rest = str(e).partition(":")
        raise ValueError(f"--{field.replace('_', '-')}:{rest}") from None


def run_typographic(args: argparse.Namespace) -> int:
    """The typographic attack on ``--data``; writes the results and a picture of clean/attacked pairs."""
    from clipforge.eval.loading import load_eval_model
    from clipforge.eval.prompts import load_classnames, load_templates
    from clipforge.eval.tasks import zeroshot_labels
    from clipforge.eval.typographic import (
        SYNTHETIC_PREFIX,
        evaluate_typographic,
        label_set,
        open_synthetic,
        plot_examples,
        typographic_record,
    )

    attack = _attack(args)
    classnames = load_classnames(args.classnames) if args.classnames else None
    given_templates = load_templates(args.templates) if args.templates else None
    synthetic = args.data.startswith(SYNTHETIC_PREFIX)
    dataset = None if synthetic else _open(args, args.data, args.split, label_col=args.label_key, classes=classnames)
    model, name, pretrained = load_eval_model(args.model, args.device, args.allow_pickle, args.act, args.pretrained)
    if dataset is None:
        vision = getattr(getattr(model.model, "config", None), "vision", None)
        dataset = open_synthetic(args.data, int(getattr(vision, "image_size", 64)), args.synthetic_size,
                                 args.synthetic_seed, args.language)
    try:
        classnames, templates = zeroshot_labels(dataset, args.data, classnames, given_templates)
    except ValueError as e:
        raise ValueError(f"--classnames: {e}") from None
    classes, fixed = label_set(classnames, attack.word)
    if fixed is not None and len(classes) > len(classnames):
        print(f"note: {attack.word!r} is not one of the {len(classnames)} classes; scoring it as an extra class",
              file=sys.stderr)
    result = evaluate_typographic(model, dataset, classnames, templates, attack, args.batch_size,
                                  cache_dir=_cache_root(args) / "zeroshot", use_cache=not args.no_classifier_cache,
                                  progress=not args.no_progress, n_examples=args.examples)
    png = args.examples_png or (str(Path(args.output).with_suffix("")) + "_examples.png" if args.output else None)
    extra = {}
    if png and result.examples:
        title = f"{name}: {args.dataset_name or args.data}, word={attack.word}"
        extra["examples"] = str(plot_examples(result.examples, result.classes, png, title))
    record = typographic_record(result, args.dataset_name or str(args.data), name, pretrained, attack, args.language,
                                extra=extra)
    _finish(args, record)
    return 0
