"""``export.json``, the exported directory's manifest: read, checked, and turned into the text processor.

The layout is the ONNX exporter's (``clipforge export MODEL OUT --to onnx``; docs/export.md): ``image.onnx``,
``text.onnx`` for the two-tower families, the text processor's file, and ``export.json`` saying which family the
model is, how to score, how to preprocess images and how to build the text processor. Every field read here is
checked, and a bad one is a ``ValueError`` naming the file and the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from clipforge.text import TextProcessor

MANIFEST = "export.json"
FORMAT, VERSION = "clipforge-onnx", 1
FAMILIES = ("clip", "clippo", "siglip")
SCORINGS = ("softmax", "sigmoid")
PROCESSORS = ("bpe", "sentencepiece", "render")
# Settings that are BPETokenizer's arguments, and facts the exporter records that the built processor must match
# (or that describe the tower, not the processor).
BPE_ARGUMENTS = ("truncate", "max_chars", "num_merges")
BPE_FACTS = ("vocab_size", "sot_token_id", "eot_token_id", "pad_token_id")
SENTENCEPIECE_FACTS = ("vocab_size", "eos_token_id", "pad_token_id")
DESCRIPTIVE = ("kind", "pool", "pool_token_id", "normalize")


@dataclass(frozen=True)
class ExportInfo:
    """What the runtime needs from ``export.json``.

    Attributes:
        directory: The exported directory.
        family: ``clip``, ``clippo`` or ``siglip``.
        towers: ``{"image": {...}, "text": {...}}`` as written (file, input and output shapes); an export of one
            tower of a two-tower model has only that one.
        text_input: ``tokens`` (the text tower) or ``pixels`` (CLIPPO: rendered text through the image tower).
        logit_scale: The multiplier of cosine similarities, as used (already exponentiated and clamped).
        logit_bias: SigLIP's bias added after scaling, or ``None``.
        scoring: ``softmax`` over labels, or ``sigmoid`` of each label's logit.
        preprocess: ``image_size``, ``resize``, ``interpolation``, ``mean``, ``std``.
        text_processor: ``kind``, ``file``, ``context_length``, ``settings``; ``None`` for an image-only export.
        model_config: clipforge's ``to_dict`` of the model config.
        raw: The whole manifest.
    """

    directory: Path
    family: str
    towers: dict[str, Any]
    text_input: str
    logit_scale: float
    logit_bias: float | None
    scoring: str
    preprocess: dict[str, Any]
    text_processor: dict[str, Any] | None
    model_config: dict[str, Any]
    raw: dict[str, Any]

    def tower_file(self, tower: str) -> Path | None:
        """The ONNX file of ``tower`` (``image`` or ``text``), ``None`` when the export lacks that tower."""
        return self.directory / self.towers[tower]["file"] if tower in self.towers else None


def _field(data: dict[str, Any], key: str, where: str, kinds: type | tuple[type, ...]) -> Any:
    """``data[key]``, required and of type ``kinds`` (bools are not numbers here)."""
    if key not in data:
        raise ValueError(f"{where}: missing field {key!r}")
    value = data[key]
    numeric = kinds in (int, float, (int, float))
    if (numeric and isinstance(value, bool)) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise ValueError(f"{where}: field {key!r} must be {names}, got {value!r}")
    return value


def _choice(data: dict[str, Any], key: str, where: str, choices: tuple[str, ...]) -> str:
    value = _field(data, key, where, str)
    if value not in choices:
        raise ValueError(f"{where}: field {key!r} must be one of {choices}, got {value!r}")
    return str(value)


def _file_name(value: Any, where: str) -> str:
    """A plain file name inside the exported directory (no folders, nothing outside it)."""
    if not isinstance(value, str) or not value or Path(value).name != value or value in (".", ".."):
        raise ValueError(f"{where}: expected a file name inside the exported directory, got {value!r}")
    return value


def read_export(directory: str | Path) -> ExportInfo:
    """Reads and checks ``directory/export.json``.

    Raises:
        FileNotFoundError: the directory, its manifest or a tower file named in it is missing.
        ValueError: the manifest is not JSON, not this format or version, or a field is missing or malformed.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a directory written by "
                                "`clipforge export MODEL OUT --to onnx`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    where = str(path)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ValueError(f"{where}: field 'format' must be {FORMAT!r}, got {data.get('format')!r}")
    if data.get("version") != VERSION:
        raise ValueError(f"{where}: version {data.get('version')!r} is not supported (this runtime reads {VERSION})")
    family = _choice(data, "family", where, FAMILIES)
    text_input = _choice(data, "text_input", where, ("tokens", "pixels"))
    if (text_input == "pixels") != (family == "clippo"):
        raise ValueError(f"{where}: field 'text_input' is {text_input!r}, but a {family} model's text goes in as "
                         f"{'pixels' if family == 'clippo' else 'tokens'}")
    towers = _towers(_field(data, "towers", where, dict), directory, where, family)
    scale = float(_field(data, "logit_scale", where, (int, float)))
    bias = data.get("logit_bias")
    if bias is not None:
        bias = float(_field(data, "logit_bias", where, (int, float)))
    if not math.isfinite(scale) or (bias is not None and not math.isfinite(bias)):
        raise ValueError(f"{where}: logit_scale and logit_bias must be finite, got {scale!r}, {bias!r}")
    return ExportInfo(
        directory=directory, family=family, towers=towers, text_input=text_input, logit_scale=scale,
        logit_bias=bias, scoring=_choice(data, "scoring", where, SCORINGS),
        preprocess=_preprocess(_field(data, "preprocess", where, dict), f"{where}: preprocess"),
        text_processor=_text_processor(data, towers, family, where),
        model_config=_field(data, "model_config", where, dict), raw=data)


def _towers(towers: dict[str, Any], directory: Path, where: str, family: str) -> dict[str, Any]:
    unknown = sorted(set(towers) - {"image", "text"})
    if unknown:
        raise ValueError(f"{where}: unknown tower(s) {unknown} in 'towers' (expected image and/or text)")
    if family == "clippo" and "image" not in towers:
        raise ValueError(f"{where}: towers must have 'image' (CLIPPO's one tower embeds images and rendered text)")
    if family == "clippo" and "text" in towers:
        raise ValueError(f"{where}: a CLIPPO export has no text tower (its text goes through image.onnx)")
    if not towers:
        raise ValueError(f"{where}: towers is empty (expected image and/or text)")
    for name in towers:
        tower = _field(towers, name, f"{where}: towers", dict)
        file = _file_name(tower.get("file"), f"{where}: towers.{name}.file")
        inputs = _field(tower, "inputs", f"{where}: towers.{name}", dict)
        expected = "pixels" if name == "image" else "tokens"
        if expected not in inputs:
            if name == "image" and "patches" in inputs:
                raise ValueError(f"{where}: a SigLIP 2 NaFlex image tower (inputs patches, mask, spatial_shapes) "
                                 "is not supported by clipforge.deploy yet; use clipforge (torch) for it")
            raise ValueError(f"{where}: towers.{name}.inputs must have {expected!r}, got {sorted(inputs)}")
        if not (directory / file).is_file():
            raise FileNotFoundError(f"{directory / file} not found (towers.{name}.file in {where})")
    return towers


def _preprocess(section: dict[str, Any], where: str) -> dict[str, Any]:
    size = _field(section, "image_size", where, int)
    if size < 1:
        raise ValueError(f"{where}: field 'image_size' must be ≥ 1, got {size!r}")
    _choice(section, "resize", where, ("shorter_crop", "squash"))
    interpolation = section.get("interpolation", "bicubic")
    if interpolation != "bicubic":
        raise ValueError(f"{where}: field 'interpolation' must be 'bicubic' (clipforge's eval transform), "
                         f"got {interpolation!r}")
    for key in ("mean", "std"):
        values = _field(section, key, where, list)
        if len(values) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{where}: field {key!r} must be three numbers, got {values!r}")
    return section


def _text_processor(data: dict[str, Any], towers: dict[str, Any], family: str, where: str) -> dict[str, Any] | None:
    section = data.get("text_processor")
    needed = family == "clippo" or "text" in towers
    if section is None and not needed:
        return None
    section = _field(data, "text_processor", where, dict)
    where = f"{where}: text_processor"
    kind = _choice(section, "kind", where, PROCESSORS)
    if (kind == "render") != (family == "clippo"):
        raise ValueError(f"{where}: field 'kind' is {kind!r}, which does not serve a {family} model")
    settings = section.get("settings") or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: field 'settings' must be an object, got {settings!r}")
    if section.get("file") is not None:
        _file_name(section["file"], f"{where}.file")
    context = section.get("context_length")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
        raise ValueError(f"{where}: field 'context_length' must be a positive integer or null, got {context!r}")
    return {**section, "settings": settings}


def build_text_processor(info: ExportInfo) -> TextProcessor | None:
    """The text processor ``export.json`` describes, from the files of the exported directory (``None`` for an
    image-only export). None of them imports torch.

    ``bpe``: ``BPETokenizer`` on ``file`` (OpenAI's vocabulary when ``file`` is null) at ``context_length``, with
    ``settings``' ``truncate``, ``max_chars``, ``num_merges``. ``sentencepiece``: ``SentencePieceTokenizer`` on
    ``file`` with ``SentencePieceConfig(settings)``. ``render``: ``UnifontRenderer(RenderConfig(settings))`` at the
    image size. The facts the exporter records beside them (``vocab_size``, the special ids) must hold for the
    processor built here; descriptive keys (``kind``, ``pool``, ``pool_token_id``, ``normalize``) are skipped.

    Raises:
        FileNotFoundError: the processor's file is missing.
        ValueError: a setting is unknown or malformed, a recorded fact does not hold, or the vocabulary does not fit
            the model's text tower.
    """
    section = info.text_processor
    if section is None:
        return None
    where = f"{info.directory / MANIFEST}: text_processor"
    kind = section["kind"]
    settings = {k: v for k, v in section["settings"].items() if k not in DESCRIPTIVE}
    file = info.directory / section["file"] if section.get("file") else None
    if file is not None and not file.is_file():
        raise FileNotFoundError(f"{file} not found (text_processor.file in {info.directory / MANIFEST})")
    if kind == "render":
        from clipforge.text.render import RenderConfig, UnifontRenderer

        return UnifontRenderer(_config(RenderConfig, {"image_size": info.preprocess["image_size"], **settings},
                                       where))
    context = section.get("context_length") or settings.get("context_length")
    if context is None:
        raise ValueError(f"{where}: field 'context_length' is needed for a {kind} tokenizer")
    if settings.pop("context_length", context) != context:
        raise ValueError(f"{where}: settings.context_length differs from context_length {context!r}")
    processor: Any
    if kind == "sentencepiece":
        from clipforge.text.sentencepiece import SentencePieceConfig, SentencePieceTokenizer

        facts = {k: settings.pop(k) for k in SENTENCEPIECE_FACTS if k in settings}
        config = _config(SentencePieceConfig, {"context_length": context, **settings}, where)
        processor = SentencePieceTokenizer(file or info.directory / config.model_file, config)
        actual = {"vocab_size": processor.vocab_size, "eos_token_id": processor.eos_token_id,
                  "pad_token_id": processor.pad_token_id}
    else:
        from clipforge.text.bpe import BPETokenizer

        facts = {k: settings.pop(k) for k in BPE_FACTS if k in settings}
        unknown = sorted(set(settings) - set(BPE_ARGUMENTS))
        if unknown:
            raise ValueError(f"{where}: unknown BPE setting(s) {unknown}; expected some of "
                             f"{BPE_ARGUMENTS + BPE_FACTS}")
        for key, value in settings.items():
            _check_bpe_argument(key, value, where)
        processor = BPETokenizer(vocab_path=file, context_length=context, **settings)
        actual = {"vocab_size": processor.vocab_size, "sot_token_id": processor.sot_token_id,
                  "eot_token_id": processor.eot_token_id, "pad_token_id": 0}  # BPETokenizer pads with zeros
    for key, value in facts.items():
        if actual[key] != value:
            raise ValueError(f"{where}: settings.{key} is {value!r}, but {file or 'the tokenizer'} gives "
                             f"{actual[key]!r}")
    vocab = info.model_config.get("text", {}).get("vocab_size")
    if isinstance(vocab, int) and processor.vocab_size > vocab:
        raise ValueError(f"{file or 'the default vocabulary'} gives {processor.vocab_size} tokens, more than the "
                         f"text tower's {vocab} (model_config.text.vocab_size): a merges file with more merges than "
                         "the model uses? Export the tokenizer with save_pretrained")
    return cast(TextProcessor, processor)


def _check_bpe_argument(key: str, value: Any, where: str) -> None:
    """``truncate`` is true/false; ``max_chars`` an integer ≥ 1; ``num_merges`` one too, or null."""
    if key == "truncate":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: settings.truncate must be true/false, got {value!r}")
    elif not (value is None and key == "num_merges") and (isinstance(value, bool) or not isinstance(value, int)
                                                          or value < 1):
        raise ValueError(f"{where}: settings.{key} must be an integer ≥ 1, got {value!r}")


def _config(cls: Any, data: dict[str, Any], where: str) -> Any:
    """``cls.from_dict(data)``, its ``ConfigError`` prefixed with where the settings came from."""
    from clipforge.config import ConfigError

    try:
        return cls.from_dict(data)
    except ConfigError as e:
        raise ValueError(f"{where}: settings: {e}") from None
