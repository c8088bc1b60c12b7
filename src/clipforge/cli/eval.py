"""``clipforge eval zeroshot|retrieval|linear-probe|typographic|robustness``: benchmark a model, write
CLIP_benchmark-style JSON.

Examples::

    clipforge eval zeroshot --model runs/x/final --data data/cifar10_wds --output results/cifar10.json
    clipforge eval zeroshot --model runs/x/final --data photos/ --classnames imagenet --templates imagenet
    clipforge eval retrieval --model runs/x/final --data flickr_test.tsv --caption-key caption --output r.json
    clipforge eval linear-probe --model runs/x/final --train-data train/ --data test/ --k-shot 16
    clipforge eval zeroshot --model openai.pt --data imagenet_val/ --alpha drop   # OpenAI's convert("RGB")
    clipforge eval zeroshot --model runs/ce/final --head runs/ce/final --data test/  # a trained classifier head
    clipforge eval typographic --model runs/x/final --data synthetic:shape --word other
    clipforge eval robustness --model runs/x/final --id val/ --shift sketch=sketch/ --output robustness/

``--data`` is an image folder (one sub-folder per class), a table (CSV/TSV/parquet), or a folder in
CLIP_benchmark's webdataset layout (``classnames.txt``, ``zeroshot_classification_templates.txt``,
``test/*.tar``). A table's columns default to training's: ``filepath``, ``label``, ``caption``
(``--image-key``, ``--label-key``, ``--caption-key``; the older spellings ``--image-col``, ``--label-col``,
``--caption-col`` still work). Images decode as in training (``clipforge.data.decode``): transparent ones
are composited on white unless ``--alpha drop``, and images outside the size limits are skipped and counted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from clipforge.cli.args import (
    ACTIVATIONS,
    non_negative_int,
    positive_int,
    real_number,
    verb_parser,
    whole_number,
    whole_numbers,
)
from clipforge.data.decode import ALPHA_RULES
from clipforge.data.tables import CAPTION_KEY, IMAGE_KEY
from clipforge.eval.loading import load_eval_model
from clipforge.eval.tasks import DEFAULT_TEMPLATES

MAX_CHUNK = 65_536  # --chunk at most: a streamed ranking block is chunk² floats, 16 GiB at this bound


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``eval`` verb with its ``zeroshot``, ``retrieval``, ``linear-probe``, ``typographic`` and
    ``robustness`` tasks."""
    p = verb_parser(sub, "eval", help="evaluate a model: zero-shot classification, retrieval, linear probe, "
                    "typographic attacks, effective robustness",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    zs = tasks.add_parser("zeroshot", help="zero-shot classification (top-1, top-5, mean per-class recall)")
    _common(zs)
    zs.add_argument("--label-key", "--label-col", dest="label_key", default=None,
                    help="table column of labels (index or class name; default: label)")
    zs.add_argument("--classnames", default=None,
                    help="class names: imagenet, cifar10, cifar100, or a .txt/.json file (default: the dataset's)")
    zs.add_argument("--templates", default=None,
                    help="prompt templates: a built-in set or a .txt/.json file "
                         f"(default: the dataset's, else {DEFAULT_TEMPLATES})")
    zs.add_argument("--confusion", default=None, metavar="PNG",
                    help="confusion-matrix image (default: beside --output as *_confusion.png)")
    zs.add_argument("--no-classifier-cache", action="store_true", help="rebuild the zero-shot classifier")
    zs.add_argument("--head", default=None, metavar="DIR",
                    help="score with a classifier run's trained head (its final/ or final/classifier/) instead of "
                         "class prompts; the class names default to the head's")
    zs.set_defaults(func=run_zeroshot)

    rt = tasks.add_parser("retrieval", help="image↔text retrieval Recall@K")
    _common(rt)
    rt.add_argument("--caption-key", "--caption-col", dest="caption_key", default=CAPTION_KEY,
                    help=f"table column of captions (default: {CAPTION_KEY})")
    rt.add_argument("--recall-k", type=whole_numbers(1), default="1,5,10",
                    help="comma-separated K values, each ≥ 1 (default: 1,5,10)")
    rt.add_argument("--chunk", type=whole_number(1, MAX_CHUNK), default=4096,
                    help=f"block side of the streamed ranking, 1..{MAX_CHUNK} (default: 4096)")
    rt.set_defaults(func=run_retrieval)

    lp = tasks.add_parser("linear-probe", help="logistic regression on frozen image features")
    _common(lp)
    lp.add_argument("--train-data", required=True, help="training set (same layouts as --data)")
    lp.add_argument("--train-split", default="train", help="shard sub-folder of a webdataset --train-data")
    lp.add_argument("--label-key", "--label-col", dest="label_key", default=None,
                    help="table column of labels (default: label)")
    lp.add_argument("--backend", choices=("torch", "sklearn"), default="torch", help="solver (default: torch)")
    lp.add_argument("--k-shot", type=positive_int, default=None, help="few-shot: k ≥ 1 training images per class")
    lp.add_argument("--C", type=real_number(0), default=None,
                    help="inverse L2 strength, > 0; skips the validation sweep")
    lp.add_argument("--val-fraction", type=real_number(0, 1), default=0.2,
                    help="share of train held out to choose C, in (0, 1) (default: 0.2)")
    lp.add_argument("--seed", type=non_negative_int, default=0,
                    help="seed of the few-shot draw and validation split, ≥ 0 (default: 0)")
    lp.add_argument("--feature-cache", default=None, metavar="DIR",
                    help="where extracted features are cached (default: <cache-dir>/features)")
    lp.set_defaults(func=run_linear_probe)
    from clipforge.cli.eval_typographic import register as register_typographic  # imports this module
    register_typographic(tasks)
    from clipforge.cli.eval_robustness import register as register_robustness
    register_robustness(tasks)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a saved model directory / checkpoint, hf-hub:ORG/REPO[@REV], a model name with --pretrained "
                        "(or NAME:TAG), or a preset / OpenCLIP name alone (random weights)")
    p.add_argument("--pretrained", default=None, metavar="TAG",
                   help="OpenCLIP's pretrained tag of --model, e.g. laion2b_s34b_b79k (weights from the Hugging Face "
                        "Hub cache; see docs/checkpoints.md)")
    p.add_argument("--data", required=True,
                   help="image folder, table (CSV/TSV/parquet), or CLIP_benchmark webdataset folder")
    p.add_argument("--output", default=None, help="result JSON path (CLIP_benchmark format)")
    p.add_argument("--dataset-name", default=None, help="name written to the results (default: the data path)")
    p.add_argument("--split", default="test", help="shard sub-folder of a webdataset --data (default: test)")
    p.add_argument("--image-key", "--image-col", dest="image_key", default=IMAGE_KEY,
                   help=f"table column of image paths (default: {IMAGE_KEY})")
    p.add_argument("--image-root", default=None, help="folder a table's image paths are relative to "
                                                      "(default: the table's folder)")
    p.add_argument("--alpha", choices=ALPHA_RULES, default="white",
                   help="transparent images: composite on white (default), or drop the alpha channel "
                        "(OpenAI's convert('RGB'), for reproducing published evaluations)")
    p.add_argument("--language", default="en", help="language recorded in the results (default: en)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch, ≥ 1 (default: 64)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow reading a pickled .bin/.pt checkpoint as --model (torch.load with weights_only=True)")
    p.add_argument("--act", choices=ACTIVATIONS, default=None,
                   help="MLP activation of an OpenAI/open_clip --model (their files do not record it; see convert)")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $CLIPFORGE_CACHE or ~/.cache/clipforge)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _cache_root(args: argparse.Namespace) -> Path:
    from clipforge.eval.zeroshot import default_cache_dir

    return Path(args.cache_dir) if args.cache_dir else default_cache_dir().parent


def _open(args: argparse.Namespace, data: str, split: str, **kwargs: Any) -> Any:
    """``--data`` (or ``--train-data``) opened with the table, root and decoding flags."""
    from clipforge.data.decode import DecodeLimits
    from clipforge.eval.datasets import open_dataset

    return open_dataset(data, image_col=args.image_key, split=split, image_root=args.image_root,
                        limits=DecodeLimits(alpha=args.alpha), **kwargs)


def _finish(args: argparse.Namespace, record: dict[str, Any]) -> None:
    from clipforge.eval.results import write_results

    print(json.dumps(record["metrics"], indent=2))
    n_skipped = record["data"]["n_skipped"]
    if n_skipped:
        print(f"skipped {n_skipped} unreadable sample(s); see \"data\" in the results", file=sys.stderr)
    if args.output:
        print(f"wrote {write_results(args.output, record)}", file=sys.stderr)


def run_zeroshot(args: argparse.Namespace) -> int:
    """Zero-shot classification of ``--data``; writes the results and a confusion-matrix PNG."""
    from clipforge.eval.prompts import load_classnames, load_templates
    from clipforge.eval.results import result_record
    from clipforge.eval.tasks import zeroshot_labels
    from clipforge.eval.zeroshot import evaluate_zeroshot, plot_confusion

    classnames = load_classnames(args.classnames) if args.classnames else None
    given_templates = load_templates(args.templates) if args.templates else None  # read before any other work
    head = None
    if args.head:
        from clipforge.train.classify import read_head

        try:
            head, head_names = read_head(args.head)
        except (OSError, ValueError) as e:
            raise ValueError(f"--head: {e}") from None
        classnames = classnames or head_names
        given_templates = given_templates or ["{}"]  # unused: the head scores
    dataset = _open(args, args.data, args.split, label_col=args.label_key, classes=classnames)
    try:
        classnames, templates = zeroshot_labels(dataset, args.data, classnames, given_templates)
    except ValueError as e:
        raise ValueError(f"--classnames: {e}") from None
    model, name, pretrained = load_eval_model(args.model, args.device, args.allow_pickle, args.act, args.pretrained)
    weights = None
    if head is not None:
        from clipforge.eval.datasets import ImageFolder

        folders = [c.replace("_", " ") for c in dataset.classes or ()] if isinstance(dataset, ImageFolder) else None
        if folders is not None and folders != classnames:
            raise ValueError(f"--head: the class folders of {args.data} ({', '.join(folders[:4])}, …) are not the "
                             f"head's classes in its order ({', '.join(classnames[:4])}, …)")
        width = model.model.config.embed_dim
        if head.num_classes != len(classnames) or head.weight.shape[1] != width:
            raise ValueError(f"--head: {args.head} scores {head.num_classes} classes at width "
                             f"{head.weight.shape[1]}; --data has {len(classnames)} classes and the model's "
                             f"embedding width is {width}")
        weights = head.weight.detach().T.to(model.device)
    result = evaluate_zeroshot(model, dataset, classnames, templates, args.batch_size,
                               cache_dir=_cache_root(args) / "zeroshot", use_cache=not args.no_classifier_cache,
                               progress=not args.no_progress, weights=weights)
    confusion = args.confusion or (str(Path(args.output).with_suffix("")) + "_confusion.png" if args.output else None)
    extra = {}
    if confusion:
        extra["confusion_matrix"] = str(plot_confusion(result.confusion, classnames, confusion,
                                                       f"{name}: {args.dataset_name or args.data}"))
    record = result_record(args.dataset_name or str(args.data), name, pretrained, "zeroshot_classification",
                           result.metrics, args.language, result.n_samples, result.skipped, extra=extra)
    _finish(args, record)
    return 0


def run_retrieval(args: argparse.Namespace) -> int:
    """Image↔text Recall@K on a captioned ``--data``."""
    from clipforge.eval.results import result_record
    from clipforge.eval.retrieval import evaluate_retrieval

    ks = args.recall_k  # a tuple of whole numbers ≥ 1 (its argparse type)
    dataset = _open(args, args.data, args.split, caption_col=args.caption_key, task="retrieval")
    model, name, pretrained = load_eval_model(args.model, args.device, args.allow_pickle, args.act, args.pretrained)
    result = evaluate_retrieval(model, dataset, args.batch_size, ks, args.chunk, progress=not args.no_progress)
    record = result_record(args.dataset_name or str(args.data), name, pretrained, "zeroshot_retrieval",
                           result.metrics, args.language, result.n_images, result.skipped,
                           extra={"n_texts": result.n_texts})
    _finish(args, record)
    return 0


def _feature_cache(args: argparse.Namespace, model: Any, dataset: Any, data: str, split: str) -> Path:
    from clipforge.eval.datasets import WdsBenchmark

    root = Path(args.feature_cache) if args.feature_cache else _cache_root(args) / "features"
    # The same data read the same way shares a cache file (a folder used as train and test is embedded once).
    split = split if isinstance(dataset, WdsBenchmark) else ""
    ident = (f"{os.path.abspath(data)}|{split}|{args.image_key}|{args.label_key}|{args.image_root}|alpha={args.alpha}"
             f"|{os.stat(data).st_mtime_ns}")
    return root / f"{model.fingerprint()}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.npz"


def run_linear_probe(args: argparse.Namespace) -> int:
    """Linear probe: features of ``--train-data`` and ``--data`` (cached), C swept on a validation split."""
    from clipforge.eval.linear_probe import extract_features, linear_probe
    from clipforge.eval.results import result_record

    train_ds = _open(args, args.train_data, args.train_split, label_col=args.label_key)
    test_ds = _open(args, args.data, args.split, label_col=args.label_key, classes=train_ds.classes)
    if train_ds.classes and test_ds.classes and train_ds.classes != test_ds.classes:
        raise ValueError(f"the classes of {args.train_data} and {args.data} differ "
                         f"({len(train_ds.classes)} vs {len(test_ds.classes)}); labels would not line up")
    model, name, pretrained = load_eval_model(args.model, args.device, args.allow_pickle, args.act, args.pretrained)
    progress = not args.no_progress
    train_cache = _feature_cache(args, model, train_ds, args.train_data, args.train_split)
    test_cache = _feature_cache(args, model, test_ds, args.data, args.split)
    train = extract_features(model, train_ds, args.batch_size, train_cache, progress)
    test = extract_features(model, test_ds, args.batch_size, test_cache, progress)
    num_classes = len(train_ds.classes) if train_ds.classes else None
    result = linear_probe(train, test, num_classes, args.backend, args.val_fraction, args.k_shot, args.C, args.seed,
                          device=model.device, progress=progress)
    extra = {"C": result.C, "n_train": result.n_train, "k_shot": args.k_shot, "backend": args.backend,
             "train_skipped": len(train.skipped)}
    record = result_record(args.dataset_name or str(args.data), name, pretrained, "linear_probe", result.metrics,
                           args.language, len(test.y), test.skipped, extra=extra)
    _finish(args, record)
    return 0
