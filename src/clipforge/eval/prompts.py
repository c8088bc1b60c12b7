"""Class names and prompt templates shipped as data (``eval/data/*.json``), and readers for user files.

Built-in sets (``load_classnames(name)`` / ``load_templates(name)``):

- ``imagenet``: OpenAI's 1,000 cleaned ImageNet class names and the CLIP paper's 80 templates
  (openai/CLIP ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``).
- ``cifar10`` / ``cifar100``: class names and 18 templates from openai/CLIP ``data/prompts.md``.
- ``siglip`` (templates only): SigLIP's prompt style, ``"This is a photo of {}."``: the template of transformers'
  zero-shot image classification pipeline, which its SigLIP documentation asks for to reproduce the released results.

A template holds ``{}`` (or ``{c}``, CLIP_benchmark's spelling) where the class name goes.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

BUILTIN = ("imagenet", "cifar10", "cifar100")
TEMPLATE_SETS = (*BUILTIN, "siglip")  # the built-in template sets: every class-name set's, and SigLIP's prompt style
MAX_LIST_BYTES = 16 << 20  # a class-name, template or label file is at most 16 MiB (ImageNet's 1,000 names: 14 KB)


def _read_builtin(filename: str) -> list[str]:
    return json.loads(resources.files("clipforge.eval").joinpath("data", filename).read_text(encoding="utf-8"))


def load_classnames(name_or_path: str | Path) -> list[str]:
    """Class names of a built-in set (``imagenet``, ``cifar10``, ``cifar100``) or from a file.

    Args:
        name_or_path: A built-in name, or a ``.txt`` file (one name a line) or ``.json`` file (a list).

    Raises:
        FileNotFoundError: When it is neither a built-in name nor an existing file.
    """
    if str(name_or_path) in BUILTIN:
        return _read_builtin(f"{name_or_path}_classnames.json")
    return read_lines(name_or_path, "class names")


def load_templates(name_or_path: str | Path) -> list[str]:
    """Prompt templates of a built-in set (``TEMPLATE_SETS``) or from a ``.txt`` / ``.json`` file (see
    :func:`load_classnames`)."""
    if str(name_or_path) in TEMPLATE_SETS:
        return _read_builtin(f"{name_or_path}_templates.json")
    templates = read_lines(name_or_path, "templates")
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if bad:
        raise ValueError(f"template {bad[0]!r} in {name_or_path} has no '{{}}' for the class name")
    return templates


def read_lines(path: str | Path, what: str = "lines") -> list[str]:
    """Non-empty stripped lines of a text file, or the list in a JSON file.

    Raises:
        FileNotFoundError: When the file does not exist (the message names ``what`` and the built-ins).
        ValueError: When the file is larger than ``MAX_LIST_BYTES``, is not UTF-8 text, is empty, or its JSON is
            not a list of strings; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path} (built-in sets: {', '.join(BUILTIN)})")
    with path.open("rb") as f:
        data = f.read(MAX_LIST_BYTES + 1)
    if len(data) > MAX_LIST_BYTES:
        raise ValueError(f"{path}: a {what} file must be at most {MAX_LIST_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file of {what} (byte {e.start}: {e.reason})") from None
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ValueError(f"{path}: expected a JSON list of strings")
    else:
        items = [line.strip() for line in text.splitlines()]
    items = [x for x in items if x]
    if not items:
        raise ValueError(f"{path}: no {what} in the file")
    return items


def fill(template: str, classname: str) -> str:
    """``fill("a photo of a {}.", "dog")`` → ``"a photo of a dog."`` (``{c}`` works too)."""
    return template.replace("{c}", classname).replace("{}", classname)
