"""Checkpoints by the names users know: ``hf-hub:org/repo[@revision]`` and OpenCLIP's ``(model, pretrained tag)``.

Two name forms resolve to a directory in the Hugging Face Hub cache (``huggingface_hub``'s own cache and layout,
``HF_HUB_CACHE`` / ``HF_HOME``), which the ordinary format detection of ``load_any`` then reads:

- ``hf-hub:org/repo`` (optionally ``@revision``: a branch, tag or commit): the repository's OpenCLIP files
  (``open_clip_config.json`` + ``open_clip_model.safetensors``, else the pickled ``open_clip_pytorch_model.bin``) when
  it has them, else its transformers files (``config.json`` + ``model.safetensors``, possibly sharded); the tokenizer
  files either way (``TEXT_FILES``). Only those files are fetched.
- An OpenCLIP model name and pretrained tag (``"ViT-B-32", "laion2b_s34b_b79k"``): the repository and file OpenCLIP
  itself downloads, from ``pretrained.json`` (generated from open_clip's table by
  ``tests/helpers/pretrained_registry.py``), with the facts the weights do not record (QuickGELU, mean/std, resize).

OpenCLIP's model names (``ViT-B-32``, ``ViT-L-14-336``, ``ViT-B-16-SigLIP`` …) map to clipforge presets through
``open_clip_names.json``, data like the presets themselves, so they work wherever a preset name does.

With ``HF_HUB_OFFLINE=1`` (or no network) names resolve from the cache alone; a name that is not cached is one error
naming the repository and the command that fetches it. ``huggingface_hub`` is imported only when a hub name is used.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

from clipforge.checkpoints.native import CheckpointError
from clipforge.config import ConfigError, replace, to_dict
from clipforge.models.config import ModelConfig

HF_HUB_PREFIX = "hf-hub:"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
HF_SHARDS = "model-*-of-*.safetensors"
TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "tokenizer.model", "special_tokens_map.json",
              "vocab.json", "merges.txt", "preprocessor_config.json", "bpe_vocab.txt.gz")
PICKLED = (".bin", ".pt", ".pth")
RESIZE_MODES = {"shortest": "shorter_crop", "squash": "squash"}  # OpenCLIP's resize_mode → CLIPConfig.image_resize
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@functools.cache
def _data(name: str) -> dict[str, Any]:
    """A JSON file shipped beside this module."""
    return json.loads(importlib.resources.files("clipforge.checkpoints").joinpath(name).read_text(encoding="utf-8"))


def open_clip_aliases() -> dict[str, dict[str, Any]]:
    """OpenCLIP model name → ``{"preset": clipforge preset, "overrides": {...}}`` (``open_clip_names.json``)."""
    return _data("open_clip_names.json")["aliases"]


def pretrained_registry() -> dict[str, dict[str, dict[str, Any]]]:
    """OpenCLIP model name → pretrained tag → where its weights live and how to use them (``pretrained.json``)."""
    return _data("pretrained.json")["models"]


def list_pretrained() -> list[tuple[str, str]]:
    """Every (OpenCLIP model name, pretrained tag) clipforge can load, as ``open_clip.list_pretrained()`` lists them."""
    return [(model, tag) for model, tags in pretrained_registry().items() for tag in tags]


def is_hub_name(name: object) -> bool:
    """Whether ``name`` is an ``hf-hub:`` name."""
    return isinstance(name, str) and name.startswith(HF_HUB_PREFIX)


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``"hf-hub:org/repo@rev"`` → ``("org/repo", "rev")`` (revision ``None`` when not given).

    Raises:
        ConfigError: the part after ``hf-hub:`` is not ``org/repo`` or ``org/repo@revision``.
    """
    spec = name.removeprefix(HF_HUB_PREFIX)
    repo, at, revision = spec.partition("@")
    if not _REPO_ID.fullmatch(repo) or ".." in repo or "--" in repo or (at and not revision):
        raise ConfigError(f"{name!r}: expected hf-hub:ORG/REPO or hf-hub:ORG/REPO@REVISION (e.g. "
                          "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K)")
    return repo, revision or None


# --- model names --------------------------------------------------------------------------------------------------

def known_model_names() -> list[str]:
    """clipforge's preset names and the OpenCLIP names that alias them."""
    from clipforge.models.presets import list_presets

    return sorted(set(list_presets()) | set(open_clip_aliases()))


def close_matches(name: str, candidates: list[str]) -> str:
    """``"; did you mean …?"`` naming the candidates closest to ``name``, or ``""``, for error messages."""
    close = difflib.get_close_matches(name, candidates, n=4, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def resolve_model_name(name: str) -> tuple[str, dict[str, Any]]:
    """A preset name, or an OpenCLIP name → ``(clipforge preset, config overrides)`` building the same model.

    Raises:
        ConfigError: an unknown name (with close matches), an OpenCLIP architecture clipforge does not build, or an
            alias whose preset this build does not register.
    """
    from clipforge.models.presets import list_presets

    presets = list_presets()
    if name in presets:
        return name, {}
    alias = open_clip_aliases().get(name)
    if alias is not None:
        if alias["preset"] not in presets:
            raise ConfigError(f"OpenCLIP's {name!r} is clipforge's preset {alias['preset']!r}, which this build of "
                              "clipforge does not register")
        return alias["preset"], json.loads(json.dumps(alias.get("overrides", {})))  # a private deep copy
    if name in _data("pretrained.json")["unsupported_models"]:
        raise ConfigError(f"OpenCLIP's {name!r} is an architecture clipforge does not build (it builds OpenAI-style "
                          "CLIP ViTs and ResNets and SigLIP; see clipforge.list_models())")
    hint = close_matches(name, known_model_names())
    raise ConfigError(f"unknown model {name!r}{hint} (clipforge.list_models() lists the presets; OpenCLIP's names "
                      "such as ViT-B-32 work too)")


def split_tag(name: Any, pretrained: str | None) -> tuple[Any, str | None]:
    """``"ViT-B-32:laion2b_s34b_b79k"`` (``open_clip.list_pretrained(as_str=True)``'s spelling) → ``("ViT-B-32",
    "laion2b_s34b_b79k")``; anything else (a path, an ``hf-hub:`` name, a name with ``pretrained``) as it is."""
    if pretrained is not None or not isinstance(name, str) or ":" not in name or is_hub_name(name):
        return name, pretrained
    model, _, tag = name.rpartition(":")
    return (model, tag) if tag and model in known_model_names() else (name, pretrained)


def build_named_config(name: str, **overrides: Any) -> ModelConfig:
    """The validated config of a preset or OpenCLIP name, with ``overrides`` applied after the alias's own."""
    from clipforge.models.factory import build_config

    preset, alias_overrides = resolve_model_name(name)
    config = build_config(preset, **alias_overrides)
    return replace(config, overrides) if overrides else config


# --- pretrained tags ----------------------------------------------------------------------------------------------

def pretrained_entry(name: str, tag: str) -> tuple[str, dict[str, Any]]:
    """``(OpenCLIP model name, registry entry)`` for ``name`` (OpenCLIP's or a clipforge preset's) and ``tag``.

    A clipforge preset name looks among the OpenCLIP names that alias it with at most another activation
    (``ViT-B/32`` finds the tags of ``ViT-B-32`` and ``ViT-B-32-quickgelu``). Tags are normalised as OpenCLIP does
    (lower case, ``-`` → ``_``).

    Raises:
        ConfigError: an unknown model (close matches), a model without released weights, or an unknown tag (the
            model's tags, and close matches).
    """
    registry, aliases = pretrained_registry(), open_clip_aliases()
    if name in registry:
        candidates = [name]
    else:
        resolve_model_name(name)  # unknown or unsupported names fail here, with their own message
        candidates = [oc for oc, a in aliases.items() if a["preset"] == name and set(a.get("overrides", {})) <= {"act"}
                      and oc in registry]
        if name.replace("/", "-") in registry:  # OpenCLIP's own spelling rule: ViT-B/32 is its ViT-B-32
            candidates.insert(0, name.replace("/", "-"))
    if not candidates:
        raise ConfigError(f"{name!r} has no released weights in OpenCLIP's table (clipforge.list_pretrained() lists "
                          "the models and tags that have)")
    clean = tag.lower().replace("-", "_")
    for oc_name in candidates:
        if clean in registry[oc_name]:
            return oc_name, registry[oc_name][clean]
    tags = sorted({t for oc in candidates for t in registry[oc]})
    raise ConfigError(f"unknown pretrained tag {tag!r} for {name!r}{close_matches(clean, tags)} (known tags: "
                      f"{', '.join(tags)})")


def pretrained_config(oc_name: str, entry: dict[str, Any]) -> ModelConfig:
    """The config of OpenCLIP's ``oc_name`` with an entry's facts: QuickGELU when its weights were trained with it
    (OpenAI's, MetaCLIP's, DFN's), its mean/std and resize mode."""
    config = build_named_config(oc_name)
    act = "quick_gelu" if entry["quick_gelu"] else config.act
    return replace(config, {"act": act, "mean": tuple(entry["mean"]), "std": tuple(entry["std"]),
                            "image_resize": RESIZE_MODES[entry["resize_mode"]]})


CHECKPOINT_FIELDS = ("tokenizer",)  # config fields a checkpoint's reader knows best (where its vocabulary file is)


def architecture(config: ModelConfig) -> dict[str, Any]:
    """What of a config fixes the built modules: preprocessing and text-processor settings left out, MLP ratios as
    the hidden widths they make (4.3637 and 6144 / 1408 build the same ViT-g MLP)."""
    data = to_dict(config)
    for key in ("mean", "std", "image_resize", *CHECKPOINT_FIELDS):
        data.pop(key, None)
    for tower in (data.get("vision"), data.get("text")):
        if isinstance(tower, dict) and "mlp_ratio" in tower and "width" in tower:
            tower["mlp_ratio"] = int(tower["width"] * tower["mlp_ratio"])
    return data


# --- the hub cache ------------------------------------------------------------------------------------------------

def _hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants  # a submodule: not an attribute until imported
    except ImportError:
        raise CheckpointError("hf-hub: names and pretrained tags need the huggingface_hub package "
                              "(pip install huggingface_hub)") from None
    return huggingface_hub


def cache_location(cache_dir: str | Path | None = None) -> str:
    """The hub cache a lookup uses: ``cache_dir``, else huggingface_hub's (``HF_HUB_CACHE``, ``HF_HOME``/hub)."""
    return str(cache_dir) if cache_dir is not None else str(_hub().constants.HF_HUB_CACHE)


def choose_files(label: str, available: set[str], allow_pickle: bool = False,
                 weights: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """The files of a repository clipforge needs, from the names it has (``available``).

    Args:
        label: Names the repository in errors.
        available: File names at the repository's root (a Hub listing, or what the cache holds).
        allow_pickle: Whether a pickled weights file may be chosen.
        weights: The weights files to try, in order (a registry entry's); ``None`` chooses by what the repository
            holds: OpenCLIP's files first, else transformers' (``model.safetensors``, a sharded index, a pickle);
            an empty sequence chooses no weights (a text processor's files only).

    Returns:
        The weights file (or the sharded index and the shard pattern) first, then the configs and tokenizer files
        the repository has.

    Raises:
        CheckpointError: no weights clipforge reads, or only a pickled file without ``allow_pickle``.
    """
    extra: list[str] = [OPEN_CLIP_CONFIG]
    if weights is not None and not weights:
        return [name for name in (OPEN_CLIP_CONFIG, HF_CONFIG, *TEXT_FILES) if name in available]
    if weights is None:
        if any(name in available for name in OPEN_CLIP_WEIGHTS):
            weights = OPEN_CLIP_WEIGHTS
        elif HF_CONFIG in available and any(name in available for name in HF_WEIGHTS):
            weights, extra = HF_WEIGHTS, [HF_CONFIG]
        else:
            shown = ", ".join(sorted(available)[:12]) or "nothing"
            raise CheckpointError(f"{label}: no checkpoint clipforge reads: it needs {' or '.join(OPEN_CLIP_WEIGHTS)} "
                                  f"(OpenCLIP), or {HF_CONFIG} with {' or '.join(HF_WEIGHTS)} (transformers); "
                                  f"found {shown}")
    found = [name for name in weights if name in available]
    if not found:
        raise CheckpointError(f"{label}: none of the weights files {', '.join(weights)}")
    if found[0].endswith(PICKLED) and not allow_pickle:
        raise CheckpointError(f"{label}: the weights are only in {found[0]}, a pickle; pass allow_pickle=True "
                              "(--allow-pickle) to read it with torch.load(weights_only=True)")
    chosen = [found[0], HF_SHARDS] if found[0].endswith(".index.json") else [found[0]]
    return chosen + [name for name in (*extra, *TEXT_FILES) if name in available]


def _candidates(weights: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Every file name ``choose_files`` could pick, to look up in the cache one by one."""
    if weights is not None:
        return (*weights, OPEN_CLIP_CONFIG, HF_CONFIG, *TEXT_FILES)
    return (*OPEN_CLIP_WEIGHTS, OPEN_CLIP_CONFIG, HF_CONFIG, *HF_WEIGHTS, *TEXT_FILES)


def _has_weights(available: set[str], weights: tuple[str, ...] | list[str] | None) -> bool:
    """Whether ``available`` holds what ``choose_files`` needs (for a text-only choice: any of its files)."""
    if weights is not None:
        return any(name in available for name in weights) if weights else bool(available)
    return any(name in available for name in OPEN_CLIP_WEIGHTS) or (
        HF_CONFIG in available and any(name in available for name in HF_WEIGHTS))


def hub_snapshot(repo_id: str, revision: str | None = None, allow_pickle: bool = False,
                 weights: tuple[str, ...] | list[str] | None = None, cache_dir: str | Path | None = None,
                 label: str | None = None) -> Path:
    """The cached snapshot directory of a Hub repository holding what clipforge needs, fetched if need be.

    Online, the repository's file list decides (``choose_files``) and ``huggingface_hub.snapshot_download`` fetches
    just those files into its cache. Offline (``HF_HUB_OFFLINE=1``, or the Hub unreachable) the same choice is made
    among the files the cache holds for that revision.

    Args:
        repo_id: ``org/repo``.
        revision: A branch, tag or commit (default ``main``).
        allow_pickle: Whether a pickled weights file may be fetched and read.
        weights: The weights files to try, in order (see ``choose_files``).
        cache_dir: The hub cache (default: huggingface_hub's).
        label: Names what was asked for in errors (default ``hf-hub:repo_id``).

    Raises:
        CheckpointError: the repository or revision does not exist, holds no usable checkpoint, or is not cached
            while offline (the message says how to fetch it).
    """
    hub = _hub()
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    label = label or f"{HF_HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    why_offline = "HF_HUB_OFFLINE is set" if hub.constants.HF_HUB_OFFLINE else None
    if why_offline is None:
        try:
            listing = set(hub.HfApi(library_name="clipforge").list_repo_files(repo_id, revision=revision))
        except RevisionNotFoundError:
            raise CheckpointError(f"{label}: the repository {repo_id} has no revision {revision!r}") from None
        except GatedRepoError:
            raise CheckpointError(f"{label}: {repo_id} is gated; accept its terms on huggingface.co and log in "
                                  "(`hf auth login`)") from None
        except RepositoryNotFoundError:
            raise CheckpointError(f"{label}: no repository {repo_id} on the Hugging Face Hub (or it is private: log "
                                  "in with `hf auth login`)") from None
        except Exception as e:  # no network, a proxy, the Hub down: fall back to the cache, as huggingface_hub does
            why_offline = f"the Hub could not be reached ({type(e).__name__})"
        else:
            files = choose_files(label, {n for n in listing if "/" not in n}, allow_pickle, weights)
            try:
                return Path(hub.snapshot_download(repo_id, revision=revision, allow_patterns=files,
                                                  cache_dir=cache_dir, library_name="clipforge"))
            except OSError as e:
                raise CheckpointError(f"{label}: fetching {', '.join(files)} from {repo_id} failed ({e})") from None
    return _cached_snapshot(repo_id, revision, allow_pickle, weights, cache_dir, label, why_offline)


def _cached_snapshot(repo_id: str, revision: str | None, allow_pickle: bool,
                     weights: tuple[str, ...] | list[str] | None, cache_dir: str | Path | None, label: str,
                     why_offline: str) -> Path:
    """``hub_snapshot`` without the network: the choice made among the files the cache holds."""
    hub = _hub()
    cached: dict[str, Path] = {}
    for name in _candidates(weights):
        found = hub.try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
        if isinstance(found, str):
            cached[name] = Path(found)
    if not _has_weights(set(cached), weights):
        raise _not_cached(repo_id, revision, weights, cache_dir, label, why_offline)
    files = choose_files(label, set(cached), allow_pickle, weights)
    snapshot = cached[files[0]].parent
    if files[0].endswith(".index.json"):
        from clipforge.checkpoints.hf import _shards

        missing = [s for s in _shards(cached[files[0]]) if not (snapshot / s).is_file()]
        if missing:
            raise _not_cached(repo_id, revision, weights, cache_dir, label, why_offline, missing)
    return snapshot


def _not_cached(repo_id: str, revision: str | None, weights: tuple[str, ...] | list[str] | None,
                cache_dir: str | Path | None, label: str, why_offline: str,
                missing: list[str] | None = None) -> CheckpointError:
    """The one error for a name the cache cannot serve offline: which repository, and how to fetch it."""
    files = missing or ([weights[0], OPEN_CLIP_CONFIG] if weights else [])  # none named: the whole repository
    rev = f" --revision {revision}" if revision else ""
    command = f"hf download {repo_id}{rev}" + "".join(f" {f}" for f in files)
    what = f"{', '.join(missing)} of {repo_id}" if missing else repo_id
    return CheckpointError(
        f"{label}: {what} is not in the Hugging Face cache ({cache_location(cache_dir)}) and {why_offline}, so "
        f"nothing can be downloaded. Fetch it once with the network on: `{command}` (huggingface-cli download … "
        "before huggingface_hub 1.0), or make the same clipforge call online; set HF_HUB_CACHE or HF_HOME if the "
        "cache lives elsewhere.")


def resolve_pretrained(name: str, tag: str, allow_pickle: bool = False, cache_dir: str | Path | None = None
                       ) -> tuple[Path, ModelConfig, str]:
    """``(cached snapshot directory, the config to build, description)`` for a model name and pretrained tag."""
    oc_name, entry = pretrained_entry(name, tag)
    config = pretrained_config(oc_name, entry)
    label = f"{name} (pretrained={tag!r}: {entry['repo']})"
    return hub_snapshot(entry["repo"], None, allow_pickle, entry["files"], cache_dir, label), config, label


def released_source(name: str | Path, allow_pickle: bool = False, cache_dir: str | Path | None = None
                    ) -> tuple[Path, str | None] | None:
    """``(local snapshot directory, activation of the name's config or None)`` for released weights named as
    ``clipforge.load`` takes them (``hf-hub:org/repo[@rev]``, ``NAME:TAG``), so that path-based code (``convert``)
    reads them like any local checkpoint; ``None`` for anything else (a path, a preset name).

    The activation is returned for a ``NAME:TAG`` whose towers share one (the registry knows OpenAI's weights are
    QuickGELU, which their files do not record); ``None`` lets the reader find it.
    """
    if isinstance(name, Path) or Path(name).exists():
        return None
    model, tag = split_tag(name, None)
    if is_hub_name(model):
        repo, revision = parse_hub_name(model)
        return hub_snapshot(repo, revision, allow_pickle, cache_dir=cache_dir), None
    if tag is None:
        return None
    source, config, _ = resolve_pretrained(model, tag, allow_pickle, cache_dir)
    return source, (config.act if getattr(config.vision, "act", None) is None else None)
