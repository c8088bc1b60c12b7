"""The shard writer: image–caption pairs into webdataset tars in img2dataset's layout, plus ``stats.json``.

Output: ``OUT/00000.tar, 00001.tar, ...``; shard ``s`` holds the good inputs among inputs
``s · shard_size ..`` of the next ``shard_size``, and input ``i`` of it has the key
``f"{s:05d}{i:0{d}d}"`` (``d`` digits enough for ``shard_size``, as img2dataset names them; a skipped
input leaves a gap). A sample has three members: ``key.jpg`` (or ``.png``/``.webp``: the original bytes
when no resize is asked for and the format is one of these, else a re-encoded JPEG), ``key.txt`` (the
caption; several lines when the source has several captions) and ``key.json`` (key, caption, sizes,
sha256, source). Every input is fully decoded before it is written, so a bad input is skipped and counted
in ``stats.json`` by reason, and every written sample is known to decode. Shards are independent, so
several processes write them in parallel with the same result.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from clipforge.data.decode import DecodeLimits, as_bad_sample, check_size, decode_image, decode_text
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
    captions = decode_text(caption_text, limits)
    if isinstance(image_or_bytes, Image.Image):
        image, data, fmt = image_or_bytes, None, None
        check_size(*image.size, limits)
    else:
        data = image_or_bytes
        image = decode_image(data, limits)  # full decode: a truncated or corrupt image is caught here
        fmt = Image.open(io.BytesIO(data), formats=limits.formats).format
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


_JOB: tuple[Any, ...] | None = None  # what _write_shard needs; set before worker processes fork


def write_shards(load: Callable[[int], RawPair], count: int, out_dir: str | Path, shard_size: int,
                 limits: DecodeLimits | None = None, resize: int | None = None, source: str = "",
                 progress: bool = True, workers: int = 1) -> dict[str, Any]:
    """Writes inputs ``load(0) .. load(count - 1)`` as shards in ``out_dir`` and returns (and saves) the stats.

    As img2dataset does, shard ``s`` holds what is good among inputs ``s · shard_size .. (s + 1) · shard_size
    - 1`` and a sample's key is ``f"{s:05d}{i - s · shard_size}"`` (zero-padded), so a skipped input leaves
    a gap in the keys and the output does not depend on how many processes wrote it. A shard whose
    inputs are all bad is not written.

    Args:
        load: Returns input ``i``; may raise ``BadSample`` (skipped and counted).
        count: Number of inputs.
        out_dir: The output folder (created; must not hold shards already).
        shard_size: Inputs per shard.
        limits: Image size limits (defaults: ``DecodeLimits()``).
        resize: Shorter side at most this, re-encoded as JPEG; ``None`` keeps original bytes where possible.
        source: Names the input in ``stats.json``.
        progress: Show a tqdm bar.
        workers: Processes writing shards in parallel (forked, so ``load`` need not be picklable).

    Returns:
        The stats written to ``out_dir/stats.json``: ``samples``, ``skipped`` (by reason), ``inputs``,
        ``image_bytes``, ``shards`` (name, samples, bytes), ``seconds``.

    Raises:
        ValueError: ``shard_size`` or ``workers`` not positive, or ``out_dir`` already holds ``.tar`` files.
    """
    global _JOB
    if shard_size <= 0 or workers <= 0:
        raise ValueError(f"--shard-size and --workers must be positive, got {shard_size} and {workers}")
    out = Path(out_dir)
    if out.is_dir() and any(out.glob("*.tar")):
        raise ValueError(f"{out} already holds .tar shards; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    start, skipped, image_bytes, shards = time.perf_counter(), Counter(), 0, []
    _JOB = (load, limits or DecodeLimits(), resize, out, shard_size, count)
    bar = tqdm(total=count, desc="shards", unit="img", disable=not progress, dynamic_ncols=True)
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        numbers = range(-(-count // shard_size))
        for result in (pool.imap(_write_shard, numbers) if pool is not None else map(_write_shard, numbers)):
            bar.update(result.pop("inputs"))
            skipped.update(result.pop("skipped"))
            image_bytes += result.pop("image_bytes")
            if result["samples"]:
                shards.append(result)
    finally:
        _JOB = None
        bar.close()
        if pool is not None:
            pool.terminate()
    stats = {"source": source, "shard_size": shard_size, "inputs": count, "samples": sum(s["samples"] for s in shards),
             "skipped": dict(sorted(skipped.items())), "image_bytes": image_bytes, "shards": shards,
             "seconds": round(time.perf_counter() - start, 3)}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _write_shard(shard: int) -> dict[str, Any]:
    """Writes shard number ``shard`` of the job in ``_JOB``; returns its stats (name, samples, bytes, inputs,
    skipped, image_bytes)."""
    assert _JOB is not None, "_write_shard runs inside write_shards"
    load, limits, resize, out, shard_size, count = _JOB
    first, digits = shard * shard_size, len(str(shard_size - 1))
    inputs = range(first, min(first + shard_size, count))
    samples, skipped, image_bytes = [], Counter(), 0
    for i in inputs:
        try:
            sample = prepare_sample(load(i), limits, resize)
        except Exception as e:  # the sample boundary: counted by reason (``error`` for the unforeseen)
            skipped[as_bad_sample(e).reason] += 1
            continue
        key = f"{shard:05d}{i - first:0{digits}d}"
        sample["__key__"], sample["json"] = key, json.dumps({"key": key, **sample["json"]}, ensure_ascii=False)
        image_bytes += len(next(v for k, v in sample.items() if k in KEEP_FORMATS.values()))
        samples.append(sample)
    path = out / f"{shard:05d}.tar"
    if samples:
        write_tar_shard(path, samples)
    return {"name": path.name, "samples": len(samples), "bytes": path.stat().st_size if samples else 0,
            "inputs": len(inputs), "skipped": dict(skipped), "image_bytes": image_bytes}
