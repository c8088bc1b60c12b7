"""A Hugging Face Hub cache in huggingface_hub's own layout, offline, for tests that must never touch the network.

The layout (``huggingface_hub.file_download``; what ``scan_cache_dir``, ``try_to_load_from_cache``,
``hf_hub_download`` and ``snapshot_download`` read)::

    <cache>/models--{org}--{name}/
        blobs/<etag>                   the bytes; the etag is the sha256 of an LFS file (weights), else git's blob sha1
        snapshots/<commit>/<filename>  a relative symlink to ../../blobs/<etag> (a copy where links are refused)
        refs/<revision>                the commit hash, without a newline

``offline_hub`` points huggingface_hub at an empty cache and turns the network off. It sets the environment variables
and also the values huggingface_hub read from them when it was first imported (``huggingface_hub.constants``): the
library consults those module attributes on every call, so patching them is what takes effect in this process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".model", ".npz", ".msgpack")


def offline_hub(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """Makes ``root/hub`` huggingface_hub's cache (``HF_HOME=root``) with ``HF_HUB_OFFLINE=1``; returns the cache."""
    import huggingface_hub.constants as constants

    cache = root / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    for key, value in {"HF_HOME": str(root), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
                       "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HOME", str(root))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    if hasattr(constants, "HUGGINGFACE_HUB_CACHE"):  # the older name of the same setting
        monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def etag(name: str, data: bytes) -> str:
    """The blob name the Hub gives a file: sha256 for LFS files, git's blob sha1 for the rest."""
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_to_cache(cache: Path, repo_id: str, files: dict[str, bytes | str | Path], revision: str = "main",
                 commit: str | None = None) -> Path:
    """Writes ``files`` (name → bytes, text or a file to copy) as one commit of ``repo_id`` in the cache.

    Args:
        cache: The hub cache (``offline_hub``'s).
        repo_id: ``org/name``.
        files: The repository's files at that commit (names at its root or in sub-folders).
        revision: The branch or tag whose ref points at the commit (``None``: no ref, reachable by hash only).
        commit: The 40-hex commit hash (default: one derived from the contents).

    Returns:
        The snapshot directory ``snapshots/<commit>``.
    """
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    contents = {name: _bytes(value) for name, value in files.items()}
    if commit is None:
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(contents):
            digest.update(name.encode() + etag(name, contents[name]).encode())
        commit = digest.hexdigest()
    snapshot = storage / "snapshots" / commit
    for name, data in contents.items():
        blob = storage / "blobs" / etag(name, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks here (Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, link)
    if revision is not None:
        ref = storage / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit, encoding="utf-8")
    return snapshot


def add_directory(cache: Path, repo_id: str, directory: Path, revision: str = "main", commit: str | None = None
                  ) -> Path:
    """Caches every file under ``directory`` (e.g. a ``save_pretrained`` output) as one commit of ``repo_id``."""
    files: dict[str, bytes | str | Path] = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*"))
                                            if p.is_file()}
    return add_to_cache(cache, repo_id, files, revision, commit)


def _bytes(value: bytes | str | Path) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, Path):
        return value.read_bytes()
    return value.encode("utf-8")


class _NoTokenizer:
    """Stands in for the tokenizer ``open_clip.push_to_hf_hub.save_for_hf`` saves (the tests' repos hold none)."""

    def save_pretrained(self, directory: Any) -> None:
        pass


def save_open_clip_repo(model: Any, model_cfg: dict[str, Any], directory: Path, safetensors: bool = True,
                        pickle: bool = False) -> Path:
    """Writes an OpenCLIP model as OpenCLIP publishes it on the Hub, with open_clip's own ``save_for_hf``:
    ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and the weights (``open_clip_model.safetensors``
    and/or ``open_clip_pytorch_model.bin``). A model built without ``open_clip.create_model`` gets OpenCLIP's
    default preprocessing first (``set_model_preprocess_cfg``)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.push_to_hf_hub import save_for_hf

    if not hasattr(model.visual, "image_mean"):
        set_model_preprocess_cfg(model, {"size": model.visual.image_size, "mode": "RGB", "mean": OPENAI_DATASET_MEAN,
                                         "std": OPENAI_DATASET_STD, "interpolation": "bicubic",
                                         "resize_mode": "shortest", "fill_color": 0})

    mode: bool | str = "both" if safetensors and pickle else safetensors
    save_for_hf(model, _NoTokenizer(), model_cfg, str(directory), safe_serialization=mode)  # type: ignore[arg-type]
    return directory


def randomise(model: Any, seed: int = 0) -> Any:
    """Perturbs every floating tensor of a reference model (LayerNorms, biases, BatchNorm statistics included) so no
    symmetric initial value hides a swapped mapping; returns it in eval mode."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith(("logit_scale", "attn_mask")):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=generator))
    return model.eval()
