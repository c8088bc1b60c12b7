"""``clipforge convert SRC DST --to FORMAT``: a thin layer over ``clipforge.checkpoints.convert``.

Examples::

    clipforge convert ViT-B-32.pt vit-b-32 --to clipforge            # OpenAI TorchScript, read without running it
    clipforge convert open_clip_pytorch_model.bin out --to clipforge --allow-pickle --act gelu
    clipforge convert runs/tiny/model hf-tiny --to hf                # then transformers.CLIPModel.from_pretrained
    clipforge convert runs/tiny/model tiny.safetensors --to open_clip
    clipforge convert hf-hub:google/siglip-base-patch16-224 siglip-b16 --to clipforge   # from the HF cache
    clipforge convert ViT-B-32:laion2b_s34b_b79k b32-hf --to hf                       # an OpenCLIP pretrained tag
    clipforge convert ViT-B-16:laion2b_s34b_b88k b16-336 --to clipforge --image-size 336   # position grid resized
    clipforge convert runs/tiny/model tiny-long --to clipforge --context-length 248       # Long-CLIP's stretch

``--image-size`` resizes a ViT's position grid bicubically (``clipforge.models.resize.resize_image_size``);
``--context-length`` stretches the text positions, the first ``--keep`` kept (``resize_context``). Both apply after
reading, before writing, and the written config says the new size, so the tokenizer pads to the new context.

DST must not exist yet (an empty folder is fine): an existing file or a folder with files in it is refused unless
``--overwrite`` is given, which replaces what the conversion writes (other files in a folder stay) and is not atomic.
DST is never SRC itself, nor a folder SRC lies in, with or without ``--overwrite``: the input would be destroyed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipforge.checkpoints import EXPORT_FORMATS, FORMATS
from clipforge.cli.args import ACTIVATIONS, verb_parser, whole_number


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``convert`` verb."""
    p = verb_parser(sub, "convert", help="convert a checkpoint between clipforge, OpenAI, open_clip, HF and big_vision",
                       description="Reads SRC (format detected unless --from names it), writes DST in --to's format. "
                                   "DST must not exist unless --overwrite is given.")
    p.add_argument("src", help="checkpoint file or directory to read, or released weights by name (hf-hub:org/repo, "
                               "NAME:TAG), read from the Hugging Face cache")
    p.add_argument("dst", help="file or directory to write")
    p.add_argument("--to", required=True, choices=EXPORT_FORMATS, help="output format")
    p.add_argument("--from", dest="src_format", choices=FORMATS, default=None,
                   help="input format (default: detected)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow reading pickled .bin/.pt files (torch.load with weights_only=True)")
    p.add_argument("--allow-jit", action="store_true",
                   help="read TorchScript archives with torch.jit.load, which runs the code inside them")
    p.add_argument("--act", choices=ACTIVATIONS, default=None,
                   help="MLP activation of an OpenAI/open_clip input (their files do not record it; OpenAI: "
                        "quick_gelu; open_clip: from open_clip_config.json, else guessed from the shape)")
    p.add_argument("--image-size", type=whole_number(1), default=None, metavar="PX",
                   help="resize the image tower's position grid to this input size (a whole number of patches)")
    p.add_argument("--context-length", type=whole_number(2), default=None, metavar="TOKENS",
                   help="stretch the text positions to this many tokens (Long-CLIP; at least the model's)")
    p.add_argument("--keep", type=whole_number(0), default=20,
                   help="with --context-length: leading text positions kept as trained (default: 20, Long-CLIP's)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing DST (not atomic; never allowed onto SRC itself)")
    p.set_defaults(func=run)


def check_destination(src: str, dst: str, overwrite: bool) -> None:
    """Refuses a DST that would destroy SRC, or that exists (a file, or a folder with files) without ``overwrite``.

    Raises:
        ValueError: Naming DST and what to do.
    """
    source, target = Path(src).resolve(), Path(dst).resolve()
    if target == source or target in source.parents:
        raise ValueError(f"DST {dst!r} is SRC or a folder holding it; converting would overwrite the input")
    if target.is_dir() and not any(target.iterdir()):
        return
    if target.exists() and not overwrite:
        kind = "a folder with files" if target.is_dir() else "a file"
        raise ValueError(f"DST {dst!r} exists ({kind}); pass --overwrite to replace it, or choose a new path")


def run(args: argparse.Namespace) -> int:
    """Converts ``args.src`` to ``args.dst`` and prints what was written."""
    from clipforge.checkpoints import convert

    check_destination(args.src, args.dst, args.overwrite)
    if (Path(args.src) / ".metadata").is_file():  # a training run's sharded checkpoint (parallel: fsdp)
        written = convert_sharded(args)
        print(f"wrote {written} ({args.to})")
        return 0
    if args.image_size is not None or args.context_length is not None:
        written = convert_resized(args)
        print(f"wrote {written} ({args.to})")
        return 0
    written = convert(args.src, args.dst, to=args.to, src_format=args.src_format, allow_pickle=args.allow_pickle,
                      allow_jit=args.allow_jit, act=args.act)
    print(f"wrote {written} ({args.to})")
    return 0


def convert_sharded(args: argparse.Namespace) -> Path:
    """Consolidates a Distributed Checkpoint folder (``RUN_DIR/checkpoints/step_N``) into one model in ``args.to``'s
    format, read in this process alone; the run's own vocabulary (``RUN_DIR/final``) is used when it has one."""
    import tempfile

    from clipforge.checkpoints import convert
    from clipforge.checkpoints.native import save_pretrained
    from clipforge.text import build_text_processor
    from clipforge.train.dcp import consolidate

    if args.image_size is not None or args.context_length is not None:
        raise ValueError("--image-size and --context-length apply to model files: consolidate the checkpoint first "
                         "(--to clipforge), then resize that directory")
    model, _ = consolidate(Path(args.src))
    final = Path(args.src).resolve().parent.parent / "final"
    processor = build_text_processor(model.config, final if final.is_dir() else None)
    if args.to == "clipforge":
        return save_pretrained(model, args.dst, processor)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, processor)
        return convert(tmp, args.dst, to=args.to)


def check_context_fits(processor: object, context_length: int) -> None:
    """Refuses a context no text can fill: the tokenizer reads at most ``max_chars`` characters of a text, each at
    most 4 UTF-8 bytes and so at most 4 ids, plus the start and end tokens.

    Raises:
        ValueError: Naming the context and the tokenizer's limit.
    """
    max_chars = getattr(processor, "max_chars", None) or getattr(getattr(processor, "config", None), "max_chars", None)
    if isinstance(max_chars, int) and context_length > 4 * max_chars + 2:
        raise ValueError(f"--context-length {context_length} is longer than the tokenizer can fill: it reads at most "
                         f"{max_chars} characters of a text, {4 * max_chars + 2} tokens at most")


def convert_resized(args: argparse.Namespace) -> Path:
    """Reads SRC, resizes its image positions and/or text context, and writes DST in ``args.to``'s format."""
    import tempfile

    from clipforge.api import get_text_processor, load
    from clipforge.checkpoints import convert
    from clipforge.checkpoints.native import save_pretrained
    from clipforge.models.resize import resize_context, resize_image_size

    extra = {"act": args.act} if args.act else {}
    if args.src_format is not None:
        extra["fmt"] = args.src_format
    model, _, processor = load(args.src, device="cpu", allow_pickle=args.allow_pickle, allow_jit=args.allow_jit,
                               **extra)
    if args.image_size is not None:
        resize_image_size(model, args.image_size)
    if args.context_length is not None:
        check_context_fits(processor, args.context_length)
        resize_context(model, args.context_length, keep=args.keep)
    if args.to == "clipforge":  # the processor's files travel; its context comes from the new config when loaded
        written = save_pretrained(model, args.dst, processor)
        get_text_processor(model, written)  # the processor at the new context builds
        return written
    with tempfile.TemporaryDirectory(prefix="clipforge-resized-") as tmp:
        save_pretrained(model, tmp, processor)
        return convert(tmp, args.dst, to=args.to)
