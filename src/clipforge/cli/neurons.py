"""``clipforge neurons``: what excites the units of a layer, in images and in rendered words; find multimodal units.

Examples::

    clipforge neurons --model runs/quickstart/final --data synthetic:test:2000 --layer visual.layer4 \\
        --top-units 8 --vocab synthetic --output neurons/
    clipforge neurons --model runs/x/final --data photos/ --layer visual.blocks.5.mlp --units 17,42 \\
        --vocab imagenet --vocab my_words.txt --output neurons/
    clipforge neurons --model runs/x/final --list-layers

``--data`` is ``synthetic[:SPLIT[:SIZE]]`` (the synthetic world, labelled by shape) or what ``clipforge eval
zeroshot`` reads: an image folder of class folders, a table with labels, a CLIP_benchmark webdataset. Its class names
join the vocabulary; images without classes are labelled by the model's zero-shot reading over the vocabulary.
The output folder gets ``index.html`` (self-contained), ``unit-<n>.png`` per unit and ``neurons.json``.
"""

from __future__ import annotations

import argparse
import sys

from clipforge.cli.args import non_negative_int, positive_int, whole_numbers


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``neurons`` verb."""
    p = sub.add_parser("neurons", help="multimodal neurons: top images, rendered words, feature visualisations",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a saved model, checkpoint, hub name or preset")
    p.add_argument("--data", help="synthetic[:SPLIT[:SIZE]], an image folder of class folders, a table or a "
                                  "CLIP_benchmark webdataset")
    p.add_argument("--layer", help="the layer (see --list-layers), e.g. visual.layer4, visual.blocks.3.mlp, embedding, "
                                   "embedding.text (the vocabulary's text embeddings as directions)")
    p.add_argument("--list-layers", action="store_true", help="print the model's layers and their unit counts")
    units = p.add_mutually_exclusive_group()
    units.add_argument("--units", type=whole_numbers(0), help="comma-separated units to show, e.g. 3,17,42")
    units.add_argument("--top-units", type=positive_int, help="show the finder's N most multimodal units (default 8)")
    p.add_argument("--vocab", action="append", default=None, metavar="SET_OR_FILE",
                   help="words to render: imagenet, cifar10, cifar100, synthetic, or a .txt/.json file; repeat or "
                        "comma-separate (default: synthetic)")
    p.add_argument("--output", help="the report's folder")
    p.add_argument("--top-k", type=positive_int, default=9, help="top images per unit (default 9)")
    p.add_argument("--words", type=positive_int, default=8, help="top words per unit (default 8)")
    p.add_argument("--featvis-steps", type=non_negative_int, default=128,
                   help="feature-visualisation steps per unit; 0 for none (default 128)")
    p.add_argument("--limit", type=positive_int, help="read at most this many images")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds the reservoir and feature visualisations")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--threads", type=positive_int, help="intra-op CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_neurons)


def run_neurons(args: argparse.Namespace) -> int:
    """Loads the model, checks the layer, units and vocabulary, analyses, writes the report, prints the ranking."""
    import torch

    from clipforge.eval.loading import load_eval_model
    from clipforge.eval.neurons import analyse, check_units, get_layer, list_layers, load_vocabulary, write
    from clipforge.eval.neurons.layers import TEXT_DIRECTIONS
    from clipforge.eval.neurons.record import open_images
    from clipforge.eval.neurons.vocab import image_size

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.list_layers:
        missing = [flag for flag, value in (("--data", args.data), ("--layer", args.layer), ("--output", args.output))
                   if not value]
        if missing:
            raise ValueError(f"{', '.join(missing)} required (or --list-layers)")
    vocab = [part for spec in (args.vocab or ["synthetic"]) for part in spec.split(",")]
    if not args.list_layers:
        load_vocabulary(vocab)  # an empty or missing vocabulary is an error before the model loads
    model, name, _ = load_eval_model(args.model, device=args.device)
    if args.list_layers:
        for layer in list_layers(model.model).values():
            print(f"{layer.name}\t{layer.kind}\t{layer.units} units")
        print(f"{TEXT_DIRECTIONS}\ttext-direction\tone unit per vocabulary word")
        return 0
    units = list(args.units) if args.units else None
    if args.layer != TEXT_DIRECTIONS:
        check_units(get_layer(model.model, args.layer), units)  # before reading any image
    images = open_images(args.data, image_size(model))
    result = analyse(model, images, args.layer, vocabulary=vocab, units=units, top_units=args.top_units,
                     k=args.top_k, n_words=args.words, featvis_steps=args.featvis_steps, seed=args.seed,
                     batch_size=args.batch_size, limit=args.limit, progress=not args.no_progress)
    page = write(result, args.output)
    print(f"{name}: {args.layer}, {result.recording.count} images, {len(result.words)} words")
    print("unit\tscore\tconcept\tpurity\tword_rank\tword_z\ttop words")
    for s in result.ranking[:20]:
        z = "-" if s.word_z is None else f"{s.word_z:.2f}"
        print(f"{s.unit}\t{s.score:.3f}\t{s.concept}\t{s.purity:.2f}\t{s.word_rank}\t{z}\t{', '.join(s.top_words)}")
    print(f"report: {page}", file=sys.stderr)
    return 0
