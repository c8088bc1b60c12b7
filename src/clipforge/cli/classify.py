"""``clipforge classify IMAGE... --labels "cat,dog"``: zero-shot labels for images, with probabilities.

Example::

    clipforge classify photo.jpg more/ --labels "a cat,a dog,a car" --model runs/x/final --top-k 3

Each label goes through the prompt template(s) (default ``"a photo of a {}."``; give ``--template`` again
for an ensemble, or ``--templates`` a built-in set such as ``siglip``: "This is a photo of {}."). The probabilities
follow the model's scoring: a softmax over the labels for CLIP (they sum to one), a sigmoid of each label's logit for
SigLIP (each label judged on its own: several may be likely, or none).

Images decode as in training and evaluation (``clipforge.data.decode``): transparent ones are composited on
white unless ``--alpha drop``; one outside the size limits (a decompression bomb, a 1-pixel-high banner) or
unreadable is reported as skipped with the reason, and when no image can be read that is the error.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from pathlib import Path

from clipforge.cli.args import ACTIVATIONS, positive_int, verb_parser
from clipforge.cli.eval import load_eval_model
from clipforge.data.decode import ALPHA_RULES

DEFAULT_TEMPLATE = "a photo of a {}."


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``classify`` verb."""
    p = verb_parser(sub, "classify", help="zero-shot classify images against a list of labels",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help='comma-separated labels, e.g. "cat,dog,car"')
    labels.add_argument("--labels-file", help="a file of labels, one a line (or a JSON list)")
    p.add_argument("--model", required=True,
                   help="a saved model directory / checkpoint, hf-hub:ORG/REPO[@REV], NAME:TAG, a model name with "
                        "--pretrained, or a model name alone (random weights)")
    p.add_argument("--pretrained", default=None, metavar="TAG",
                   help="OpenCLIP's pretrained tag of --model, e.g. laion2b_s34b_b79k (from the Hugging Face cache)")
    prompts = p.add_mutually_exclusive_group()
    prompts.add_argument("--template", action="append", default=None,
                         help=f"prompt template with {{}} for the label (repeatable; default: {DEFAULT_TEMPLATE!r})")
    prompts.add_argument("--templates", default=None,
                         help="a built-in template set (imagenet, cifar10, cifar100, siglip) or a file of templates")
    p.add_argument("--top-k", type=positive_int, default=5, help="labels shown per image, ≥ 1 (default: 5)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per batch, ≥ 1 (default: 32)")
    p.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow reading a pickled .bin/.pt checkpoint as --model (torch.load with weights_only=True)")
    p.add_argument("--act", choices=ACTIVATIONS, default=None,
                   help="MLP activation of an OpenAI/open_clip --model (their files do not record it; see convert)")
    p.add_argument("--alpha", choices=ALPHA_RULES, default="white",
                   help="transparent images: composite on white (default), or drop the alpha channel "
                        "(OpenAI's convert('RGB'))")
    p.set_defaults(func=classify)


def parse_labels(labels: str | None, labels_file: str | None) -> list[str]:
    """The label list from ``--labels`` (comma-separated) or ``--labels-file``.

    Raises:
        ValueError: When no label is given or a label repeats.
    """
    from clipforge.eval.prompts import read_lines

    out = read_lines(labels_file, "labels") if labels_file else [s.strip() for s in (labels or "").split(",")]
    out = [s for s in out if s]
    if not out:
        raise ValueError("no labels given")
    dupes = sorted({s for s in out if out.count(s) > 1})
    if dupes:
        raise ValueError(f"repeated label(s): {', '.join(dupes)}")
    return out


def collect_images(paths: list[str]) -> list[Path]:
    """Files as given, and the images inside folders (recursively, sorted, hidden files skipped).

    Raises:
        FileNotFoundError: When a path does not exist.
        ValueError: When no image is found.
    """
    from clipforge.data.folders import CLASS_EXTENSIONS, list_images

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            with contextlib.suppress(FileNotFoundError):  # a folder without images: an error only if all are
                files.extend(list_images(p, CLASS_EXTENSIONS))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"image not found: {p}")
    if not files:
        raise ValueError(f"no images found in {', '.join(paths)}")
    return files


def classify(args: argparse.Namespace) -> int:
    """Prints, for every image, the top-k labels with their probabilities."""
    import torch

    from clipforge.data.decode import BadSample, DecodeLimits, read_image
    from clipforge.eval.zeroshot import build_classifier

    labels = parse_labels(args.labels, args.labels_file)
    files = collect_images(args.images)
    from clipforge.eval.prompts import load_templates

    templates = load_templates(args.templates) if args.templates else args.template or [DEFAULT_TEMPLATE]
    model, _, _ = load_eval_model(args.model, args.device, args.allow_pickle, args.act, args.pretrained)
    weights = build_classifier(model, labels, templates, use_cache=False)  # (D, L)
    limits = DecodeLimits(alpha=args.alpha)
    k = min(args.top_k, len(labels))
    n_read, skipped = 0, []
    for start in range(0, len(files), args.batch_size):
        good, bad = [], []
        for f in files[start:start + args.batch_size]:
            try:
                good.append((f, read_image(f, limits)))
            except BadSample as e:
                bad.append((f, e))
        n_read += len(good)
        if good:
            x = torch.stack([model.transform(im) for _, im in good])
            probs = model.probabilities(model.encode_images(x) @ weights)  # (B, L)
            top = probs.topk(k, dim=-1)
            for (f, _), p, i in zip(good, top.values.tolist(), top.indices.tolist()):
                print(f)
                for prob, idx in zip(p, i):
                    print(f"  {prob:7.2%}  {labels[idx]}")
        for path, problem in bad:
            print(f"{path}\n  skipped: {problem}")
        skipped += bad
    if n_read == 0:
        if len(files) == 1:
            raise ValueError(f"cannot read {files[0]}: {skipped[0][1]}")
        reasons = ", ".join(f"{reason}: {n}" for reason, n in Counter(e.reason for _, e in skipped).items())
        raise ValueError(f"none of the {len(files)} images could be read ({reasons})")
    return 0
