"""Argument types and the one-line error parser shared by the ``clipforge`` verbs.

A flag's bounds live in its ``type=``: argparse calls it while parsing, so a value out of range is refused before
any work, with ``clipforge VERB: error: argument --flag: expected …, got …`` on one line and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")  # --act: the MLP activation OpenAI/open_clip files do not record


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``PROG: error: MESSAGE (see PROG --help)``, exit status 2.

    argparse's own ``error`` prints the usage first, which for a verb with many flags is a dozen lines in front of
    the one that matters. Sub-parsers made with ``add_subparsers`` inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        """Prints the one-line error and exits with status 2."""
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def verb_parser(sub: argparse._SubParsersAction, name: str, **kwargs: Any) -> OneLineParser:
    """``sub.add_parser(name, **kwargs)`` as a ``OneLineParser`` (the parsers of its sub-verbs are too).

    When the top-level parser is already a ``OneLineParser`` its sub-parsers are born one; otherwise the new parser,
    which holds no state of its own class, takes the subclass that only changes ``error``.
    """
    parser = sub.add_parser(name, **kwargs)
    if not isinstance(parser, OneLineParser):
        parser.__class__ = OneLineParser
    return parser


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def whole_number(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low..high`` (no upper bound when ``high`` is None)."""
    allowed = f"a whole number ≥ {low}" if high is None else f"a whole number in {low}..{high}"

    def parse(text: str) -> int:
        value = _as_int(text)
        if value is None:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {value}")
        return value

    parse.__name__ = "whole_number"
    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)


def real_number(low: float, high: float | None = None, *, low_open: bool = True,
                high_open: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number above ``low`` (at least ``low`` when ``low_open`` is False) and below
    ``high`` (at most, when ``high_open`` is False); NaN and ±inf are refused."""
    if high is None:
        allowed = f"a number {'>' if low_open else '≥'} {low:g}"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text}")
        return value

    parse.__name__ = "real_number"
    return parse


def whole_numbers(low: int = 1) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated whole numbers, each ≥ ``low`` (``"1,5,10"`` → ``(1, 5, 10)``)."""
    allowed = f"comma-separated whole numbers ≥ {low}"

    def parse(text: str) -> tuple[int, ...]:
        values = [_as_int(part) for part in text.split(",")]
        if not values or any(v is None or v < low for v in values):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return tuple(v for v in values if v is not None)

    parse.__name__ = "whole_numbers"
    return parse
