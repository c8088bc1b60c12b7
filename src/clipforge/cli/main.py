"""The ``clipforge`` command: one entry point, each verb a thin function over the Python API."""

from __future__ import annotations

import argparse
import importlib
import sys

from clipforge.cli.args import OneLineParser

# Each module exposes ``register(subparsers)``, which adds its verb(s) with ``set_defaults(func=...)``.
VERB_MODULES = [
    "clipforge.cli.models",
    "clipforge.cli.train",
    "clipforge.cli.eval",
    "clipforge.cli.neurons",
    "clipforge.cli.classify",
    "clipforge.cli.convert",
    "clipforge.cli.export",
    "clipforge.cli.merge",
    "clipforge.cli.data",
    "clipforge.cli.embed",
    "clipforge.cli.search",
    "clipforge.cli.serve",
    "clipforge.vqa.cli",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every verb registered."""
    parser = OneLineParser(prog="clipforge", description="Train, evaluate and use CLIP-family models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clipforge")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; bad input ends with a one-line error and exit status 2, not a traceback."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides after an option (``a=1 --resume latest b=2``) belong to the overrides
        if not isinstance(getattr(args, "overrides", None), list) or any("=" not in e or e.startswith("-")
                                                                          for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # bad input, a missing or unwritable file, a full disk
        print(f"clipforge {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional stack that is not installed: the message names the extra
        print(f"clipforge {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipforge {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
