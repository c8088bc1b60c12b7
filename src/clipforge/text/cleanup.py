"""OpenAI's caption clean-up (ftfy, HTML unescape twice, whitespace collapse, lowercase), exact and fast.

``ftfy.fix_text`` costs about 100 µs on a 120-character caption with one accented letter, and nearly all of it is
one search of ftfy's mojibake regex (``ftfy.badness.is_bad``) over the whole caption. ``fix_text`` here is ftfy's
own loop (``ftfy.fix_and_explain`` under ``fix_text``'s default config, line by line as ``fix_text`` does) calling
ftfy's own step functions, with three exact shortcuts:

- ftfy's mojibake fixer (``fix_encoding``) returns its input when that is ASCII or not ``is_bad`` (the first test
  of ``ftfy._fix_encoding_one_step_and_explain``); where it would run, the whole text goes to ftfy itself;
- ``is_bad`` searches only the windows around non-ASCII characters: every match of ftfy's regex contains one and
  is at most a few characters long (both read from the regex's parse tree at import; if that cannot show them,
  ``is_bad`` is ftfy's own);
- the character fixers (C1 controls, ligatures, widths, quotes, line breaks, surrogates, terminal escapes, control
  characters) run only on text holding a character one of them can change (``FIXABLE``, from ftfy's tables).

``tests/test_bpe.py`` compares ``fix_text``, ``is_bad`` and ``clean`` with ftfy on generated and property-based
text, and checks ``FIXABLE`` against every code point.
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache

import ftfy
from ftfy import chardata, fixes
from ftfy.badness import BADNESS_RE

# ftfy.fix_and_explain's character fixers, in its order (they follow unescape_html and fix_encoding there).
CHAR_FIXERS = tuple(ftfy.FIXERS[name] for name in (
    "fix_c1_controls", "fix_latin_ligatures", "fix_character_width", "uncurl_quotes", "fix_line_breaks",
    "fix_surrogates", "remove_terminal_escapes", "remove_control_chars"))
_TABLE_CHARS = sorted({*chardata.LIGATURES, *chardata.WIDTH_MAP, *chardata.CONTROL_CHARS,
                       *map(ord, "\r\x1b\u2028\u2029")})
# A character some fixer in CHAR_FIXERS can change: their tables, their single-character regexes, the characters
# fix_line_breaks replaces (and \x85, a C1 control) and the escape that starts a terminal escape sequence.
FIXABLE = re.compile("|".join([
    "[" + "".join(re.escape(chr(c)) for c in _TABLE_CHARS) + "]", chardata.C1_CONTROL_RE.pattern,
    chardata.SINGLE_QUOTE_RE.pattern, chardata.DOUBLE_QUOTE_RE.pattern, fixes.SURROGATE_RE.pattern]))
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
_MAX_SEGMENT = ftfy.TextFixerConfig().max_decode_length


def _only_non_ascii(item: tuple) -> bool:
    """True for a parsed regex item that matches one character and only non-ASCII ones (a literal or a class)."""
    op, arg = item
    if str(op) == "LITERAL":
        return arg >= 128
    if str(op) != "IN":
        return False
    lows = [a if str(o) == "LITERAL" else a[0] if str(o) == "RANGE" else -1 for o, a in arg]
    return min(lows) >= 128  # NEGATE or CATEGORY (\s, \w) give -1: they can match ASCII


def _window_safe(items: list) -> bool:
    """True if a parsed sequence matches the same way in ``search(text, pos, endpos)`` as in the whole text:
    single characters, bounded repeats of them, and ``^`` (which ``pos`` does not move), no other anchors or
    lookarounds."""
    for op, arg in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT"):
            if not _window_safe(list(arg[2])):
                return False
        elif name == "AT":
            if str(arg) != "AT_BEGINNING":
                return False
        elif name not in ("LITERAL", "NOT_LITERAL", "IN", "ANY"):
            return False
    return True


def _mojibake_reach() -> int | None:
    """How far (in characters) a match of ftfy's mojibake regex can reach past a non-ASCII character it contains.

    None unless the parse tree shows that every alternative needs a non-ASCII character, that a match is bounded,
    and that windowed searches find the same matches.
    """
    try:
        from re import _parser
    except ImportError:  # a Python without the private parser: use ftfy's own search
        return None
    if BADNESS_RE.flags & re.IGNORECASE:  # case folding could pair ASCII with non-ASCII characters
        return None
    tree = _parser.parse(BADNESS_RE.pattern, BADNESS_RE.flags)
    alternatives = [list(a) for a in tree[0][1][1]] if len(tree) == 1 and str(tree[0][0]) == "BRANCH" else [list(tree)]
    longest = tree.getwidth()[1]
    if longest >= _parser.MAXREPEAT or not all(_window_safe(a) and any(map(_only_non_ascii, a)) for a in alternatives):
        return None
    return longest - 1


_REACH = _mojibake_reach()


def is_bad(text: str) -> bool:
    """``ftfy.badness.is_bad(text)``: searched only within ``_REACH`` characters of each non-ASCII run.

    A match of length at most ``_REACH + 1`` holding a character of a run lies in ``[run start - _REACH,
    run end + _REACH)``; overlapping windows are merged so no character is searched twice.
    """
    if _REACH is None:
        return bool(BADNESS_RE.search(text))
    start = end = 0
    for run in _NON_ASCII_RUN.finditer(text):
        low, high = max(run.start() - _REACH, 0), run.end() + _REACH
        if low > end:
            if end and BADNESS_RE.search(text, start, end):
                return True
            start = low
        end = high
    return end > 0 and BADNESS_RE.search(text, start, end) is not None


def _fix_segment(text: str, unescape_html: bool) -> str | None:
    """``ftfy.fix_and_explain(text)[0]`` for one line, or None where ftfy's mojibake fixer would act."""
    while True:
        original = text
        if unescape_html:
            text = fixes.unescape_html(text)
        if not text.isascii() and is_bad(text):
            return None
        if FIXABLE.search(text):
            for fixer in CHAR_FIXERS:
                text = fixer(text)
        text = unicodedata.normalize("NFC", text)
        if text == original:
            return text


@lru_cache(maxsize=1 << 16)
def _ftfy_fix_text(text: str) -> str:
    """ftfy itself, for text with mojibake; cached, as such captions are few and often repeated."""
    return ftfy.fix_text(text)


def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)``: its segments (lines), its ``unescape_html="auto"`` rule (off from the first
    segment containing ``<`` on), and its steps, with the shortcuts in the module docstring."""
    if len(text) > _MAX_SEGMENT:
        return _ftfy_fix_text(text)
    unescape_html, out = True, []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        segment = line + "\n" if i < len(lines) - 1 else line
        unescape_html = unescape_html and "<" not in segment
        fixed = _fix_segment(segment, unescape_html)
        if fixed is None:
            return _ftfy_fix_text(text)
        out.append(fixed)
    return "".join(out)


def is_plain_ascii(text: str) -> bool:
    """True where ftfy and HTML unescaping provably change nothing: printable ASCII without ``&``."""
    return text.isascii() and text.isprintable() and "&" not in text


def clean(text: str) -> str:
    """OpenAI's text clean-up: ftfy fix, HTML unescape twice, whitespace collapse and strip, lowercase.

    Whitespace is collapsed with ``str.split`` (open_clip) rather than OpenAI's ``regex`` ``\\s+``; they differ only
    on U+001C..U+001F, which ftfy has already removed.
    """
    if not is_plain_ascii(text):
        text = html.unescape(html.unescape(fix_text(text)))
    return " ".join(text.split()).lower()
