"""The shard writer: image–caption pairs into webdataset tars in img2dataset's layout, plus ``stats.json``.

Output: ``OUT/00000.tar, 00001.tar, ...`` of ``shard_size`` samples each; sample ``k`` of shard ``s`` has
the key ``f"{s:05d}{k:0{d}d}"`` (``d`` digits enough for ``shard_size``, as img2dataset names them) and
three members: ``key.jpg`` (or ``.png``/``.webp``: the original bytes when no resize is asked for and the
format is one of these, else a re-encoded JPEG), ``key.txt`` (the caption; several lines when the
source has several captions) and ``key.json`` (key, caption, sizes, sha256, source). Every input is
fully decoded before it is written, so a bad input is skipped and counted in ``stats.json`` by reason,
and every written sample is known to decode.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from clipforge.data.decode import BadSample, DecodeLimits, check_size, decode_image, decode_text
from clipforge.data.webdataset import write_tar_shard

# (encoded image or PIL image, caption text, extra json fields); may raise BadSample.
RawPair = tuple[bytes | Image.Image, str | bytes, dict[str, Any]]
KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """RGB JPEG bytes of ``image``."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def prepare_sample(raw: RawPair, limits: DecodeLimits, resize: int | None) -> dict[str, Any]:
    """A validated sample (``{"jpg"|"png"|"webp": bytes, "txt": str, "json": dict}``) from one input.

    Args:
        raw: The input pair.
        limits: Image size limits.
        resize: Resize so the shorter side is at most this (re-encoding as JPEG); ``None`` keeps the bytes.

    Raises:
        BadSample: the image or caption is unusable.
    """
    image_or_bytes, caption_text, extra = raw
    captions = decode_text(caption_text)
    if isinstance(image_or_bytes, Image.Image):
        image, data, fmt = image_or_bytes, None, None
        check_size(*image.size, limits)
    else:
        data = image_or_bytes
        image = decode_image(data, limits)  # full decode: a truncated or corrupt image is caught here
        fmt = Image.open(io.BytesIO(data)).format
    original = image.size
    if resize is not None and min(image.size) > resize:
        scale = resize / min(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC, reducing_gap=3.0)
        data, fmt = None, None
    if data is None or fmt not in KEEP_FORMATS:
        data, fmt = encode_jpeg(image), "JPEG"
    meta = {"caption": captions[0], "width": image.width, "height": image.height, "original_width": original[0],
            "original_height": original[1], "sha256": hashlib.sha256(data).hexdigest(), "status": "success", **extra}
    return {KEEP_FORMATS[fmt]: data, "txt": "\n".join(captions), "json": meta}


def write_shards(load: Callable[[int], RawPair], count: int, out_dir: str | Path, shard_size: int,
                 limits: DecodeLimits | None = None, resize: int | None = None, source: str = "",
                 progress: bool = True) -> dict[str, Any]:
    """Writes inputs ``load(0) .. load(count - 1)`` as shards in ``out_dir`` and returns (and saves) the stats.

    Args:
        load: Returns input ``i``; may raise ``BadSample`` (skipped and counted).
        count: Number of inputs.
        out_dir: The output folder (created; must not hold shards already).
        shard_size: Samples per shard (the last one may hold fewer).
        limits: Image size limits (defaults: ``DecodeLimits()``).
        resize: Shorter side at most this, re-encoded as JPEG; ``None`` keeps original bytes where possible.
        source: Names the input in ``stats.json``.
        progress: Show a tqdm bar.

    Returns:
        The stats written to ``out_dir/stats.json``: ``samples``, ``skipped`` (by reason), ``inputs``,
        ``image_bytes``, ``shards`` (name, samples, bytes), ``seconds``.

    Raises:
        ValueError: ``shard_size`` not positive, or ``out_dir`` already holds ``.tar`` files.
    """
    if shard_size <= 0:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    out = Path(out_dir)
    if out.is_dir() and any(out.glob("*.tar")):
        raise ValueError(f"{out} already holds .tar shards; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    limits, digits = limits or DecodeLimits(), len(str(shard_size - 1))
    skipped: Counter[str] = Counter()
    image_bytes, shards, start = 0, [], time.perf_counter()
    bar = tqdm(total=count, desc="shards", unit="img", disable=not progress, dynamic_ncols=True)

    def good_samples() -> Iterator[dict[str, Any]]:
        nonlocal image_bytes
        for i in range(count):
            bar.update(1)
            try:
                sample = prepare_sample(load(i), limits, resize)
            except BadSample as e:
                skipped[e.reason] += 1
                continue
            image_bytes += len(next(v for k, v in sample.items() if k in KEEP_FORMATS.values()))
            yield sample

    samples = good_samples()
    for shard in itertools.count():
        batch = list(itertools.islice(samples, shard_size))
        if not batch:
            break
        for k, sample in enumerate(batch):
            sample["__key__"] = key = f"{shard:05d}{k:0{digits}d}"
            sample["json"] = json.dumps({"key": key, **sample["json"]}, ensure_ascii=False)
        path = out / f"{shard:05d}.tar"
        write_tar_shard(path, batch)
        shards.append({"name": path.name, "samples": len(batch), "bytes": os.path.getsize(path)})
    bar.close()
    stats = {"source": source, "shard_size": shard_size, "inputs": count, "samples": sum(s["samples"] for s in shards),
             "skipped": dict(sorted(skipped.items())), "image_bytes": image_bytes, "shards": shards,
             "seconds": round(time.perf_counter() - start, 3)}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
