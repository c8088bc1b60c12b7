"""OpenAI's caption clean-up (ftfy, HTML unescape twice, whitespace collapse, lowercase), exact and fast.

``ftfy.fix_text`` costs about 100 µs on a 120-character caption with one accented letter, and nearly all of it is
one search of ftfy's mojibake regex (``ftfy.badness.is_bad``) over the whole caption. ``fix_text`` here is ftfy's
own loop (``ftfy.fix_and_explain`` under ``fix_text``'s default config, line by line as ``fix_text`` does) calling
ftfy's own step functions, with three exact shortcuts:

- ftfy's mojibake fixer (``fix_encoding``) returns its input when that is ASCII or not ``is_bad`` (the first test
  of ``ftfy._fix_encoding_one_step_and_explain``); where it would run, the whole text goes to ftfy itself;
- ``is_bad`` searches only the windows around a few hundred "anchor" characters (Latin-1 and Windows-1252
  symbols, box drawing, some accented capitals...): every match of ftfy's regex contains one and is at most a few
  characters long (both read from the regex's parse tree at import; if that cannot show them, ``is_bad`` is
  ftfy's own), so a caption whose only non-ASCII characters are curly quotes, dashes, emoji or CJK is not
  searched at all, and one with an accented letter only a few characters either side of it;
- each character fixer (C1 controls, ligatures, widths, quotes, line breaks, surrogates, terminal escapes, control
  characters) runs only on text holding a character it can change (``GUARDED_FIXERS``, from ftfy's tables).

``tests/test_bpe.py`` compares ``fix_text``, ``is_bad`` and ``clean`` with ftfy on generated and property-based
text, and checks each fixer's guard against every code point.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import ftfy
from ftfy import chardata, fixes
from ftfy.badness import BADNESS_RE


def _char_class(code_points: Iterable[int]) -> re.Pattern[str]:
    """A regex matching any one of ``code_points``."""
    return re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(code_points)) + "]")


# ftfy.fix_and_explain's character fixers, in its order (after unescape_html and fix_encoding), each with a regex
# for the characters it can change: their tables and one-character regexes, the characters fix_line_breaks
# replaces, the escape that starts a terminal escape sequence. Text without one is returned unchanged.
GUARDED_FIXERS = (
    (fixes.fix_c1_controls, chardata.C1_CONTROL_RE),
    (fixes.fix_latin_ligatures, _char_class(chardata.LIGATURES)),
    (fixes.fix_character_width, _char_class(chardata.WIDTH_MAP)),
    (fixes.uncurl_quotes, re.compile(f"{chardata.SINGLE_QUOTE_RE.pattern}|{chardata.DOUBLE_QUOTE_RE.pattern}")),
    (fixes.fix_line_breaks, _char_class(map(ord, "\r\u2028\u2029\x85"))),
    (fixes.fix_surrogates, fixes.SURROGATE_RE),
    (fixes.remove_terminal_escapes, _char_class([0x1B])),
    (fixes.remove_control_chars, _char_class(chardata.CONTROL_CHARS)),
)
FIXABLE = re.compile("|".join(guard.pattern for _, guard in GUARDED_FIXERS))
_MAX_SEGMENT = ftfy.TextFixerConfig().max_decode_length
# The steps in _fix_segment are fix_text's under these defaults; if an ftfy release changes them, ftfy itself runs.
_DEFAULTS_AS_ASSUMED = ftfy.TextFixerConfig() == ftfy.TextFixerConfig()._replace(
    unescape_html="auto", remove_terminal_escapes=True, fix_encoding=True, fix_c1_controls=True,
    fix_latin_ligatures=True, fix_character_width=True, uncurl_quotes=True, fix_line_breaks=True, fix_surrogates=True,
    remove_control_chars=True, normalization="NFC")


def _non_ascii_ranges(item: tuple) -> list[tuple[int, int]] | None:
    """Code point ranges of a parsed regex item that matches one character, only non-ASCII ones (a literal or a
    class of literals and ranges), else None."""
    op, arg = item
    if str(op) == "LITERAL":
        ranges = [(arg, arg)]
    elif str(op) == "IN" and all(str(o) in ("LITERAL", "RANGE") for o, _ in arg):  # no NEGATE, \s, \w
        ranges = [(a, a) if str(o) == "LITERAL" else a for o, a in arg]
    else:
        return None
    return ranges if min(low for low, _ in ranges) >= 128 else None


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


def _mojibake_anchors() -> tuple[re.Pattern[str], int] | None:
    """Runs of characters every match of ftfy's mojibake regex contains one of, and how far (in characters) a
    match can reach past that character.

    Each alternative of the regex contributes its smallest non-ASCII-only character class. None unless the parse
    tree shows that every alternative has one, that matches are bounded, and that windowed searches find the
    same matches as a search of the whole text.
    """
    try:
        from re import _parser  # type: ignore[attr-defined]  # typeshed has no stub for this private module
    except ImportError:  # a Python without the private parser: use ftfy's own search
        return None
    if BADNESS_RE.flags & re.IGNORECASE:  # case folding could pair ASCII with non-ASCII characters
        return None
    tree = _parser.parse(BADNESS_RE.pattern, BADNESS_RE.flags)
    alternatives = [list(a) for a in tree[0][1][1]] if len(tree) == 1 and str(tree[0][0]) == "BRANCH" else [list(tree)]
    longest = tree.getwidth()[1]
    if longest >= _parser.MAXREPEAT or not all(map(_window_safe, alternatives)):
        return None
    anchors: set[tuple[int, int]] = set()
    for alternative in alternatives:
        classes = [r for r in map(_non_ascii_ranges, alternative) if r]
        if not classes:
            return None
        anchors.update(min(classes, key=lambda ranges: sum(high - low + 1 for low, high in ranges)))
    chars = "".join(re.escape(chr(low)) + ("-" + re.escape(chr(high)) if high > low else "")
                    for low, high in sorted(anchors))
    return re.compile(f"[{chars}]+"), longest - 1


_ANCHORS = _mojibake_anchors()


def is_bad(text: str) -> bool:
    """``ftfy.badness.is_bad(text)``, searched only near runs of ``_ANCHORS`` characters.

    A match reaching at most ``reach`` characters past an anchor character it holds lies in ``[run start - reach,
    run end + reach)`` of that character's run; overlapping windows are merged so no character is searched twice.
    """
    if _ANCHORS is None:
        return bool(BADNESS_RE.search(text))
    anchor_runs, reach = _ANCHORS
    start = end = 0
    for run in anchor_runs.finditer(text):
        low, high = max(run.start() - reach, 0), run.end() + reach
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
        if unescape_html and "&" in text:  # every HTML entity starts with "&"
            text = fixes.unescape_html(text)
        if not text.isascii() and is_bad(text):
            return None
        if FIXABLE.search(text):
            for fixer, guard in GUARDED_FIXERS:
                if guard.search(text):
                    text = fixer(text)
        text = unicodedata.normalize("NFC", text)
        if text == original:
            return text


_CACHE_MAX_TEXT = 512  # characters of a text ``_ftfy_fix_text`` remembers at most: ≤ 65,536 × 512 characters held


@lru_cache(maxsize=1 << 16)
def _ftfy_fix_text_cached(text: str) -> str:
    return ftfy.fix_text(text)


def _ftfy_fix_text(text: str) -> str:
    """ftfy itself, for text with mojibake; cached up to ``_CACHE_MAX_TEXT`` characters, as such captions are few
    and often repeated (longer ones are not, so the cache's memory stays bounded)."""
    return _ftfy_fix_text_cached(text) if len(text) <= _CACHE_MAX_TEXT else ftfy.fix_text(text)



def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)``: its segments (lines), its ``unescape_html="auto"`` rule (off from the first
    segment containing ``<`` on), and its steps, with the shortcuts in the module docstring."""
    if len(text) > _MAX_SEGMENT or not _DEFAULTS_AS_ASSUMED:
        return _ftfy_fix_text(text)
    if "\n" not in text:  # one segment
        fixed = _fix_segment(text, "<" not in text)
        return _ftfy_fix_text(text) if fixed is None else fixed
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
