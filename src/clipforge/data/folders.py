"""Image–caption pairs from a folder: every image file with a sidecar caption file of the same stem.

``photos/cat.jpg`` + ``photos/cat.txt`` is one pair; sub-folders are searched too. The sidecar may hold
several captions, one per line (one is picked per sample). An image without a sidecar raises
``BadSample("no_caption")`` on access, so it is counted rather than silently dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from clipforge.data.decode import BadSample, DecodeLimits, decode_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


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
        limits: Image size limits.
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

    def raw(self, i: int) -> tuple[bytes, bytes]:
        """Pair ``i`` undecoded: ``(encoded image, sidecar bytes)``.

        Raises:
            BadSample: ``no_caption`` when the sidecar is missing.
        """
        file = self.files[i]
        try:
            caption = file.with_suffix(".txt").read_bytes()
        except OSError:
            raise BadSample("no_caption", f"no readable {file.with_suffix('.txt').name} beside {file}") from None
        try:
            return file.read_bytes(), caption
        except OSError as e:  # removed or unreadable since the folder was listed
            raise BadSample("no_image", f"cannot read {file}: {type(e).__name__}") from None
