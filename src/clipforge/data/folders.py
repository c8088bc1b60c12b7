"""The image-folder reader, in its two layouts.

- **Captions** (``FolderPairs``, training): every image file with a sidecar caption file of the same stem.
  ``photos/cat.jpg`` + ``photos/cat.txt`` is one pair; sub-folders are searched too. The sidecar may hold
  several captions, one per line (one is picked per sample). An image without a sidecar raises
  ``BadSample("no_caption")`` on access, so it is counted rather than silently dropped.
- **Classes** (``ClassFolder``, classification): ``root/<class>/<image>``, one sub-folder per class (searched
  recursively); the classes are the sorted sub-folder names, as torchvision's ``ImageFolder`` has them.

Hidden files and folders (a name starting with ``.``) are skipped in both.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from clipforge.data.decode import BadSample, DecodeLimits, decode_image, read_bytes, read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
CLASS_EXTENSIONS = (*IMAGE_EXTENSIONS, ".bmp", ".gif", ".tif", ".tiff")  # evaluation sets (ImageNet's) hold these too


def list_images(root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Every image file under ``root`` (recursively, hidden files skipped), sorted.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
        FileNotFoundError: it holds no image file.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(extensions)}) under {root}")
    return files


class FolderPairs(torch.utils.data.Dataset):
    """Item ``i`` is the ``i``-th image file (sorted) and its sidecar's bytes; a bad pair raises ``BadSample``.

    Args:
        root: The folder.
        limits: Image size limits and the alpha rule.
        min_size: Decode at least this shorter side (reduce-on-decode); ``None``: full size.
    """

    def __init__(self, root: str | Path, limits: DecodeLimits | None = None, min_size: int | None = None):
        self.files = list_images(root)
        self.limits, self.min_size = limits or DecodeLimits(), min_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Image.Image, bytes]:
        data, caption = self.raw(i)
        return decode_image(data, self.limits, self.min_size), caption

    def source(self, i: int) -> str:
        """The path of pair ``i``'s image."""
        return str(self.files[i])

    def raw(self, i: int) -> tuple[bytes, bytes]:
        """Pair ``i`` undecoded: ``(encoded image, sidecar bytes)``.

        Raises:
            BadSample: ``no_caption`` when the sidecar is missing, ``no_image`` when the image went missing,
                ``too_large`` for a sidecar over ``max_text_bytes`` or an image over ``max_image_bytes`` (refused
                before reading).
        """
        file = self.files[i]
        try:
            caption = read_bytes(file.with_suffix(".txt"), self.limits.max_text_bytes, "no_caption")
        except BadSample as e:
            if e.reason != "no_caption":
                raise
            raise BadSample("no_caption", f"no readable {file.with_suffix('.txt').name} beside {file}") from None
        return read_bytes(file, self.limits.max_image_bytes), caption  # no_image: removed since it was listed


class ClassFolder(torch.utils.data.Dataset):
    """Item ``i`` is ``(RGB image, class index)`` of the ``i``-th image, class by class; a bad image raises
    ``BadSample``.

    Within a class, a folder's files (sorted) come before its sub-folders' (sorted), as ``os.walk`` lists them.

    Args:
        root: The folder of class folders.
        limits: Image size limits and the alpha rule.
        min_size: Decode at least this shorter side (reduce-on-decode); ``None``: full size.

    Raises:
        ValueError: ``root`` has no class sub-folder, or no image in any.
    """

    def __init__(self, root: str | Path, limits: DecodeLimits | None = None, min_size: int | None = None):
        self.root = Path(root)
        self.limits, self.min_size = limits or DecodeLimits(), min_size
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise ValueError(f"{self.root}: no class sub-folders (expected {self.root}/<class>/<image>)")
        self.files = [(path, label) for label, name in enumerate(self.classes) for path in self._walk(name)]
        if not self.files:
            raise ValueError(f"{self.root}: no images found (suffixes: {', '.join(CLASS_EXTENSIONS)})")

    def _walk(self, name: str) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [Path(dirpath) / f for f in sorted(filenames)
                      if f.lower().endswith(CLASS_EXTENSIONS) and not f.startswith(".")]
        return found

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        path, label = self.files[i]
        return read_image(path, self.limits, self.min_size), label

    def source(self, i: int) -> str:
        """The path of image ``i``."""
        return str(self.files[i][0])
