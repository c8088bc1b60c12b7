"""Reading Iconify icon sets (``@iconify-json/<prefix>`` npm packages): icons, their concepts and styles, captions,
and the rasterised PNG of each.

A package holds ``icons.json`` in the IconifyJSON format (``prefix``, ``icons`` {name: {body, width?, height?,
left?, top?, hidden?}}, ``aliases``, default ``width``/``height``), ``info.json`` (name, author, license: title,
spdx, url; and a ``category`` such as ``UI 24px`` or ``Emoji``) and ``metadata.json`` (``categories``
{category: [names]}, and for sets with styles ``suffixes`` {suffix: style name}). The full IconifyJSON of the
``@iconify/json`` collection carries ``info``/``categories``/``suffixes`` inside ``icons.json``; both are read.

**Concepts and styles.** An icon's name minus its style suffix is its concept: ``house-bold`` in Phosphor is the
concept ``house`` in style ``bold``; ``home-outline-rounded`` in Material Symbols is ``home`` in
``outline-rounded``. Suffixes come from the set's ``metadata.json`` where it lists them, else from
:data:`STYLE_SUFFIXES`; the longest suffix that matches wins, and a name with none is the set's unsuffixed style.
Words are split on ``-``/``_``; trailing variant tokens (numbers, ``alt``, ``variant``: ``home-2`` is another
drawing of ``home``) are dropped, and a name with no word of two letters or more (``123``, ``a-b``) is left out.
Aliases (other names for an icon already read), hidden (deprecated) icons and exact duplicate bodies within a
set are left out, so no image carries two concepts.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Styles by name suffix for sets whose metadata.json does not list them ("" is the unsuffixed style's name).
STYLE_SUFFIXES: dict[str, dict[str, str]] = {
    "tabler": {"": "outline", "filled": "filled"},
    "bi": {"": "regular", "fill": "fill"},
    "mdi": {"": "filled", "outline": "outline"},
    "carbon": {"": "regular", "filled": "filled"},
    "ri": {"line": "line", "fill": "fill"},
    "heroicons": {"": "outline", "solid": "solid", "16-solid": "solid-16", "20-solid": "solid-20"},
}
# The unsuffixed style's name when the metadata calls it nothing useful.
DEFAULT_STYLE = "regular"
VARIANT_TOKENS = {"alt", "variant"}
STYLE_WORDS = {"fill": "filled"}  # how a style reads in a caption
WORD = re.compile(r"[a-z]{2,}")
# Emoji sets: their names are Unicode's and their concepts repeat across vendors (see the issue). Matched on
# the prefix, on a prefix that contains "emoji", and on an info.json category that says Emoji.
EMOJI_PREFIXES = frozenset({
    "twemoji", "noto", "noto-v1", "openmoji", "fluent-emoji", "fluent-emoji-flat", "fluent-emoji-high-contrast",
    "emojione", "emojione-monotone", "emojione-v1", "fxemoji", "streamline-emojis",
})
ICON_TEMPLATES = ("an icon of {a}.", "a {c} icon.", "{c}", "a pictogram of {a}.", "a symbol of {a}.")
STYLED_TEMPLATES = ("a {s} icon of {a}.", "{a}, drawn in {s} style.")
CATEGORY_TEMPLATES = ("{a} icon, {k}.", "an icon of {a} from the {k} category.")
ZEROSHOT_TEMPLATES = ("an icon of a {c}.", "a {c} icon.", "a pictogram of a {c}.", "a symbol of a {c}.",
                      "a simple drawing of a {c}.", "{c}")


@dataclass(frozen=True)
class Icon:
    """One drawable icon of a set, with its concept and style.

    Attributes:
        set: The set's prefix (``ph``).
        name: The icon's name in the set (``house-bold``).
        concept: Its concept, words separated by spaces (``house``).
        style: Its style within the set (``bold``); :attr:`style_id` is ``set:style``.
        body: The SVG body (the content of the ``<svg>`` element).
        box: ``(left, top, width, height)``: the viewBox.
        categories: The set's categories that list the icon (lower case).
    """

    set: str
    name: str
    concept: str
    style: str
    body: str
    box: tuple[float, float, float, float]
    categories: tuple[str, ...] = ()

    @property
    def style_id(self) -> str:
        return f"{self.set}:{self.style}"

    def svg(self, size: int) -> str:
        """The full ``<svg>`` document, ``size`` pixels square; a non-square viewBox is centred (SVG's default)."""
        left, top, width, height = (_num(v) for v in self.box)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                f'width="{size}" height="{size}" viewBox="{left} {top} {width} {height}" color="#000">'
                f"{self.body}</svg>")

    def captions(self, styled: bool = True) -> list[str]:
        """Caption lines: concept templates, the style (``styled``), and each category the set gives it."""
        a = with_article(self.concept)
        lines = [t.format(a=a, c=self.concept) for t in ICON_TEMPLATES]
        if styled and self.style not in ("", DEFAULT_STYLE):
            words = STYLE_WORDS.get(self.style, self.style).replace("-", " ")
            lines += [t.format(a=a, s=words) for t in STYLED_TEMPLATES]
        categories = [k for k in self.categories if k != self.concept]
        lines += [CATEGORY_TEMPLATES[i % len(CATEGORY_TEMPLATES)].format(a=a, k=k) for i, k in enumerate(categories)]
        return lines


@dataclass
class IconSet:
    """A set read from its package: its icons and what was left out.

    Attributes:
        prefix: The set's prefix.
        info: ``info.json`` (name, author, license, category, ...), or ``{}``.
        version: The npm package's version (``package.json``), or ``""``.
        styles: Suffix → style name, as used.
        icons: The kept icons, sorted by name.
        dropped: Left-out names by reason (``alias``, ``hidden``, ``not_a_word``, ``duplicate``, ``transformed``).
        path: The package folder.
    """

    prefix: str
    info: dict[str, Any]
    version: str
    styles: dict[str, str]
    icons: list[Icon] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    path: Path = Path()

    def licence(self) -> dict[str, Any]:
        """The set's licence record: name, package and version, licence (title, spdx, url) and author."""
        return {"prefix": self.prefix, "name": self.info.get("name", self.prefix),
                "package": f"@iconify-json/{self.prefix}", "version": self.version,
                "icon_set_version": self.info.get("version", ""), "license": self.info.get("license", {}),
                "author": self.info.get("author", {})}


def is_emoji_set(prefix: str, info: dict[str, Any] | None = None) -> bool:
    """Whether a set is an emoji set (left out of the benchmark): by prefix, or by its info.json category."""
    category = str((info or {}).get("category", "")).lower()
    return prefix in EMOJI_PREFIXES or "emoji" in prefix or "emoji" in category


def package_dir(node_modules: Path, prefix: str) -> Path:
    """The folder of ``@iconify-json/<prefix>`` in a ``node_modules`` folder."""
    return node_modules / "@iconify-json" / prefix


def installed_prefixes(node_modules: Path) -> list[str]:
    """The prefixes of every ``@iconify-json/*`` package with an ``icons.json`` in ``node_modules``."""
    root = node_modules / "@iconify-json"
    return sorted(p.name for p in root.iterdir() if (p / "icons.json").is_file()) if root.is_dir() else []


def read_info(path: Path) -> dict[str, Any]:
    """A package's ``info.json`` (or the ``info`` inside its ``icons.json``); ``{}`` when neither exists."""
    if (path / "info.json").is_file():
        return dict(_load(path / "info.json"))
    if (path / "icons.json").is_file():
        return dict(_load(path / "icons.json").get("info", {}))
    return {}


def read_set(path: Path, prefix: str) -> IconSet:
    """Reads the package at ``path`` into an :class:`IconSet` (concepts and styles as the module docstring says).

    Raises:
        FileNotFoundError: When ``path/icons.json`` is missing.
        ValueError: When ``icons.json`` is not an IconifyJSON object of icons with bodies.
    """
    icons_path = path / "icons.json"
    if not icons_path.is_file():
        raise FileNotFoundError(f"{icons_path}: no icons.json (is @iconify-json/{prefix} installed?)")
    data = _load(icons_path)
    if not isinstance(data.get("icons"), dict):
        raise ValueError(f"{icons_path}: expected an IconifyJSON object with an 'icons' mapping")
    meta = {k: data[k] for k in ("categories", "suffixes") if k in data}
    if (path / "metadata.json").is_file():
        meta.update(_load(path / "metadata.json"))
    version = str(_load(path / "package.json").get("version", "")) if (path / "package.json").is_file() else ""
    styles = {str(k): _style_name(str(k), str(v)) for k, v in (meta.get("suffixes") or {}).items()}
    styles = styles or STYLE_SUFFIXES.get(prefix, {"": DEFAULT_STYLE})
    categories: dict[str, list[str]] = {}
    for category, names in (meta.get("categories") or {}).items():
        for name in names:
            categories.setdefault(name, []).append(str(category).lower())
    out = IconSet(prefix, read_info(path), version, styles, path=path)
    out.dropped["alias"] = len(data.get("aliases") or {})
    default_w, default_h = data.get("width", 16), data.get("height", 16)
    seen: set[str] = set()
    for name in sorted(data["icons"]):
        icon = data["icons"][name]
        if not isinstance(icon, dict) or not isinstance(icon.get("body"), str):
            raise ValueError(f"{icons_path}: icons[{name!r}] has no 'body' string")
        if icon.get("hidden"):
            out.dropped["hidden"] += 1
            continue
        if icon.get("rotate") or icon.get("hFlip") or icon.get("vFlip"):
            out.dropped["transformed"] += 1  # no icon of the chosen sets has these; only aliases use them
            continue
        split = split_name(name, styles)
        if split is None:
            out.dropped["not_a_word"] += 1
            continue
        digest = hashlib.sha1(icon["body"].encode()).hexdigest()
        if digest in seen:
            out.dropped["duplicate"] += 1
            continue
        seen.add(digest)
        box = (icon.get("left", data.get("left", 0)), icon.get("top", data.get("top", 0)),
               icon.get("width", default_w), icon.get("height", icon.get("width", default_h)))
        out.icons.append(Icon(prefix, name, split[0], split[1], icon["body"], box, tuple(categories.get(name, ()))))
    out.dropped = Counter({k: v for k, v in out.dropped.items() if v})
    return out


def split_name(name: str, styles: dict[str, str]) -> tuple[str, str] | None:
    """``(concept, style)`` of an icon name, or ``None`` for a name that is no word (see the module docstring).

    >>> split_name("house-bold", {"": "regular", "bold": "bold"})
    ('house', 'bold')
    """
    name = name.lower()
    style = styles.get("", DEFAULT_STYLE)
    for suffix in sorted((s for s in styles if s), key=len, reverse=True):
        if name.endswith("-" + suffix) and len(name) > len(suffix) + 1:
            name, style = name[: -len(suffix) - 1], styles[suffix]
            break
    tokens = [t for t in re.split(r"[-_\s]+", name) if t]
    while tokens and (tokens[-1].isdigit() or tokens[-1] in VARIANT_TOKENS):
        tokens.pop()
    if not any(WORD.search(t) for t in tokens):
        return None
    return " ".join(tokens), style


def with_article(words: str) -> str:
    """``"a house"``, ``"an arrow"``."""
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def rasterise(svg: str) -> bytes:
    """An RGBA PNG of an SVG document (at the size its ``width``/``height`` say), transparency kept (resvg).

    Raises:
        ImportError: resvg-py is not installed (``pip install 'clipforge[icons]'``).
        ValueError: The SVG does not render.
    """
    try:
        import resvg_py
    except ImportError as e:
        raise ImportError("rasterising icons needs resvg-py: pip install 'clipforge[icons]'") from e
    data = bytes(resvg_py.svg_to_bytes(svg_string=svg, skip_system_fonts=True))
    return data if _is_rgba_png(data) else _to_rgba_png(data)


def _is_rgba_png(data: bytes) -> bool:
    # The IHDR chunk's colour type (byte 25) is 6 for RGBA with 8-bit depth (byte 24).
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 8 and data[25] == 6


def _to_rgba_png(data: bytes) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def _style_name(suffix: str, name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or suffix or DEFAULT_STYLE


def _num(value: Any) -> str:
    return f"{float(value):g}"


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
