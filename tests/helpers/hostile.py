"""Hostile data, generated (no binary blobs): bad samples of many kinds, with the exact skips they must cause.

Run as a script to write them (``python tests/helpers/hostile.py OUT_DIR``), or import :func:`write_hostile`.
It writes, from a seed, always the same bytes:

- ``OUT/shards/000NN.tar``: webdataset shards where every image kind of :data:`IMAGE_KINDS` and every sidecar
  kind of :data:`SIDECAR_KINDS` appears :data:`COPIES` times, with good samples to make :data:`USABLE_PER_SHARD`
  usable ones per shard, plus tar damage (:data:`TAR_KINDS`): bad header checksums, a member cut short,
  repeated keys, members with no extension, folders, symlinks and hidden files inside the tars. Every shard
  begins and ends with a good sample, so a reader that has used every good sample has met every bad one.
- ``OUT/table/pairs.csv`` + ``OUT/table/img/``: the image kinds as files (under image extensions, whatever
  their format), rows with hostile captions (not UTF-8, blank, huge) and rows naming missing files; columns
  ``filepath``, ``caption``, ``label`` (a colour class).
- ``OUT/classes/<colour>/``: the same image files as a folder of class folders (zero-shot eval, classify).
- ``OUT/expected.json``: what each must give (:class:`Expected`).

Every kind's reason is the one ``clipforge.data.decode`` documents; ``None`` marks kinds that must decode
(odd modes, wrong extensions, captions in the json), which count as usable.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a script: make ``helpers`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.images import corrupt_png, encode, noise, png_bomb, png_chunk

COLOURS = ("red", "green", "blue")
COPIES = 30  # samples of each bad kind in the shards (spread over them)
SHARDS = 8
USABLE_PER_SHARD = 48
HUGE_JSON_COPIES = 2  # a 1.1 MB json each: a few are enough
SIZE = (40, 48)
EPOCH = time.gmtime(946_684_800)  # 2000-01-01: PDFs carry dates; fixed, so a seed always writes the same bytes


def _img(seed: int, mode: str = "RGB") -> Image.Image:
    image = noise(*SIZE, seed=seed)
    return image if mode == "RGB" else image.convert(mode)


def _jpeg_frame(seed: int, offset: int, value: bytes) -> bytes:
    data = bytearray(encode(_img(seed)))
    sof = data.find(b"\xff\xc0")
    data[sof + offset:sof + offset + len(value)] = value
    return bytes(data)


def _png_bad_crc(seed: int) -> bytes:
    data = bytearray(encode(_img(seed), "PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    return bytes(data)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(bytes(64)))
            + png_chunk(b"IEND", b""))


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(data)
    out[offset:offset + len(value)] = value
    return bytes(out)


def _random(seed: int, n: int = 2000) -> bytes:
    return bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8))


def _psd(seed: int) -> bytes:
    return b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 3, 48, 40, 8, 3) + _random(seed, 200)


# name -> (bytes from a seed, the field / file extension it is stored under, the reason it must give)
ImageKind = tuple[Callable[[int], bytes], str, str | None]
IMAGE_KINDS: dict[str, ImageKind] = {
    "jpeg_truncated": (lambda s: (d := encode(_img(s)))[:len(d) * 2 // 3], "jpg", "truncated"),
    "jpeg_header_only": (lambda s: encode(_img(s))[:30], "jpg", "truncated"),
    "jpeg_no_components": (lambda s: _jpeg_frame(s, 9, b"\x00"), "jpg", "corrupt"),
    "jpeg_zero_height": (lambda s: _jpeg_frame(s, 5, b"\x00\x00"), "jpg", "corrupt"),
    "jpeg_soi_then_garbage": (lambda s: b"\xff\xd8\xff" + b" garbage %d" % s * 50, "jpg", "corrupt"),
    "png_bad_ihdr_crc": (_png_bad_crc, "png", "corrupt"),
    "png_truncated": (lambda s: (d := encode(_img(s), "PNG"))[:len(d) * 2 // 3], "png", "truncated"),
    "png_corrupt_idat": (lambda s: corrupt_png(), "png", "corrupt"),
    "png_bomb": (lambda s: png_bomb(100_000, 100_000), "png", "too_large"),
    "png_huge_header": (lambda s: _png_header(30_000, 30_000), "png", "too_large"),
    "png_line_header": (lambda s: _png_header(1, 1_000_000), "png", "bad_size"),
    "png_extreme_aspect": (lambda s: encode(noise(400, 8, seed=s), "PNG"), "png", "bad_size"),
    "png_tiny": (lambda s: encode(noise(4, 4, seed=s), "PNG"), "png", "bad_size"),
    "webp_truncated": (lambda s: encode(_img(s), "WEBP")[:60], "webp", "corrupt"),
    "webp_riff_garbage": (lambda s: b"RIFF" + struct.pack("<I", 1000) + b"WEBPVP8 " + _random(s, 200), "webp",
                          "corrupt"),
    "gif_truncated": (lambda s: (d := encode(_img(s, "P"), "GIF"))[:len(d) // 2], "gif", "truncated"),
    "gif_header_only": (lambda s: encode(_img(s, "P"), "GIF")[:20], "gif", "corrupt"),
    "gif_huge_screen": (lambda s: _patched(encode(_img(s, "P"), "GIF"), 6, struct.pack("<HH", 65535, 65535)), "gif",
                        "too_large"),
    "tiff_truncated": (lambda s: (d := encode(_img(s), "TIFF"))[:len(d) // 2], "tif", "truncated"),
    "tiff_header_only": (lambda s: encode(_img(s), "TIFF")[:8], "tif", "corrupt"),
    "bmp_truncated": (lambda s: (d := encode(_img(s), "BMP"))[:len(d) // 2], "bmp", "truncated"),
    "bmp_huge_dims": (lambda s: _patched(encode(_img(s), "BMP"), 18, struct.pack("<ii", 100_000, 100_000)), "bmp",
                      "too_large"),
    "psd": (_psd, "jpg", "not_image"),  # formats PIL may know, outside the accepted list, under an image name
    "ico": (lambda s: encode(_img(s), "ICO"), "png", "not_image"),
    "eps": (lambda s: encode(_img(s), "EPS"), "jpg", "not_image"),
    "pdf": (lambda s: encode(_img(s), "PDF", creationDate=EPOCH, modDate=EPOCH), "jpg", "not_image"),
    "tga": (lambda s: encode(_img(s), "TGA"), "png", "not_image"),
    "svg": (lambda s: b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="48"/>', "png", "not_image"),
    "html_error_page": (lambda s: b"<html><body>404 Not Found</body></html>" * 10, "jpg", "not_image"),
    "random_bytes": (_random, "jpg", "not_image"),
    "text_as_image": (lambda s: b"a photo of a cat\n" * 20, "webp", "not_image"),
    "zero_bytes": (lambda s: b"", "jpg", "empty"),
    # These must decode: odd modes and extensions are no reason to lose a sample.
    "png_as_jpg": (lambda s: encode(_img(s), "PNG"), "jpg", None),
    "jpeg_cmyk": (lambda s: encode(_img(s, "CMYK"), "JPEG"), "jpg", None),
    "png_16_bit": (lambda s: encode(_img(s, "L").convert("I;16"), "PNG"), "png", None),
    "png_rgba": (lambda s: encode(noise(*SIZE, seed=s, mode="RGBA"), "PNG"), "png", None),
    "png_la": (lambda s: encode(_img(s, "LA"), "PNG"), "png", None),
    "gif_palette": (lambda s: encode(_img(s, "P"), "GIF"), "gif", None),
    "tiff_lzw": (lambda s: encode(_img(s), "TIFF", compression="tiff_lzw"), "tif", None),
}

# name -> (the sample's fields from a seed, the reason it must give); the image is a good JPEG unless replaced
SidecarKind = tuple[Callable[[int], dict[str, bytes]], str | None]
SIDECAR_KINDS: dict[str, SidecarKind] = {
    "no_caption": (lambda s: {"txt": None}, "no_caption"),  # type: ignore[dict-item]
    "blank_caption": (lambda s: {"txt": b" \n\t \n"}, "no_caption"),
    "non_utf8_caption": (lambda s: {"txt": b"caf\xe9 \xff\xfe"}, "bad_text"),
    "huge_caption": (lambda s: {"txt": b"a" * 70_000}, "too_large"),
    "json_not_json": (lambda s: {"txt": None, "json": b"{not json"}, "no_caption"),  # type: ignore[dict-item]
    "json_nested": (lambda s: {"txt": None, "json": b"[" * 50_000 + b"]" * 50_000}, "bad_text"),  # type: ignore[dict-item]
    "json_caption_deep": (lambda s: {"txt": None, "json": b'{"x": ' * 40 + b'"y"' + b"}" * 40},  # type: ignore[dict-item]
                          "bad_text"),
    "json_huge": (lambda s: {"txt": None, "json": b'{"caption": "' + b"x" * 1_100_000 + b'"}'},  # type: ignore[dict-item]
                  "too_large"),
    "json_caption_list": (lambda s: {"txt": None, "json": json.dumps({"captions": ["one", "two"]}).encode()},  # type: ignore[dict-item]
                          None),
    "no_image": (lambda s: {"jpg": None}, "no_image"),  # type: ignore[dict-item]
    "unknown_field_only": (lambda s: {"jpg": None, "txt": None, "json": None, "xyz": b"?"}, "no_caption"),  # type: ignore[dict-item]
}

TAR_KINDS = ("bad_header_checksum", "member_cut_short", "repeated_key", "no_extension", "directory", "symlink",
             "hidden_file")


@dataclass
class Expected:
    """What the hostile data must give.

    Attributes:
        shards: ``clipforge data stats`` on the shards: ``samples`` read, ``usable``, ``skipped`` by reason,
            ``damaged_regions`` (tar holes) and ``bad_shards`` (shards cut short).
        table_rows: Rows of the table; ``table_eval``: zero-shot eval's skips on it by reason (label column).
        folder_images: Image files in the class folders; ``folder_skipped``: their skips by reason.
        kinds: The kinds written (image, sidecar and tar damage).
    """

    shards: dict = field(default_factory=dict)
    table_rows: int = 0
    table_eval: dict[str, int] = field(default_factory=dict)
    table_train_reasons: list[str] = field(default_factory=list)
    folder_images: int = 0
    folder_skipped: dict[str, int] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)


def _good(key: str, seed: int) -> dict[str, bytes]:
    return {"__key__": key.encode(), "jpg": encode(_img(seed)), "txt": f"a photo of {key}".encode(),
            "json": json.dumps({"key": key}).encode()}


def _members(sample: dict[str, bytes]) -> list[tuple[str, bytes]]:
    key = sample["__key__"].decode()
    return [(f"{key}.{ext}", value) for ext, value in sample.items() if ext != "__key__" and value is not None]


def _write_tar(path: Path, members: list[tuple[str, bytes | tuple[str, str]]]) -> list[int]:
    """Writes ``(name, bytes)`` members (``("dir", "")``: a folder, ``("symlink", target)``: a link); returns each
    member's header offset."""
    offsets = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, value in members:
            offsets.append(tar.offset)
            info = tarfile.TarInfo(name)
            if isinstance(value, tuple):
                info.type = tarfile.DIRTYPE if value[0] == "dir" else tarfile.SYMTYPE
                info.linkname = value[1]
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return offsets


def write_shards(folder: Path, seed: int = 0) -> dict:
    """The hostile shards (module docstring); returns what ``inspect_shards`` must report.

    Each shard holds :data:`USABLE_PER_SHARD` usable samples (good ones fill up what its bad kinds leave), so
    readers splitting the shards among them each use a whole number of batches.
    """
    folder.mkdir(parents=True, exist_ok=True)
    bad: list[tuple[str, str | None, dict[str, bytes | None]]] = []
    for c in range(COPIES):  # copy by copy, so every shard gets a mix of kinds
        for name, (make, ext, reason) in IMAGE_KINDS.items():
            bad.append((name, reason, {"jpg": None, ext if ext in ("jpg", "png", "webp") else "jpg": make(seed + c)}))
        for name, (fields, reason) in SIDECAR_KINDS.items():
            if name != "json_huge" or c < HUGE_JSON_COPIES:
                bad.append((name, reason, fields(seed + c)))
    skipped, usable, samples, holes = Counter(), 0, 0, 0
    per_shard = -(-len(bad) // SHARDS)
    for s in range(SHARDS):
        members: list[tuple[str, bytes | tuple[str, str]]] = []
        damaged: list[str] = []  # member names whose headers get a bad checksum
        chunk = bad[s * per_shard:(s + 1) * per_shard]
        repeats = [i for i in range(len(chunk)) if i % 40 == 20]
        chunk_usable = sum(r is None for _, r, _ in chunk) + sum(chunk[i][1] is None for i in repeats)
        fillers = USABLE_PER_SHARD - chunk_usable - 6  # first, 2 before and 2 after the holes, last
        assert fillers >= 0, f"shard {s}: {chunk_usable} usable kinds, more than USABLE_PER_SHARD"
        spots = [round((g + 1) * len(chunk) / (fillers + 1)) for g in range(fillers)]
        shard_usable = 0

        def good(tag: str, members: list = members, s: int = s) -> None:
            nonlocal shard_usable
            members.extend(_members(_good(f"s{s}_good{tag}", 1000 * s + len(members))))
            shard_usable += 1

        good("first")
        members += [(f"s{s}_dir", ("dir", "")), (f"s{s}_noext", b"no extension"), (f"s{s}_link.jpg",
                    ("symlink", "../../etc/passwd")), (f"._s{s}_hidden.jpg", b"resource fork")]
        for i, (name, reason, fields) in enumerate(chunk):
            for g in range(spots.count(i)):
                good(f"{i}_{g}")
            sample = {**_good(f"s{s}_{i}_{name}", 1000 * s + 500 + i), **fields}
            for _ in range(2 if i in repeats else 1):  # a repeated key: the same members again, a second sample
                members.extend(_members(sample))  # type: ignore[arg-type]
                samples += 1
                if reason is None:
                    shard_usable += 1
                else:
                    skipped[reason] += 1
        for g in range(spots.count(len(chunk))):
            good(f"end_{g}")
        for d in range(2):  # bad header checksums: the image member of a good sample is lost
            good(f"before_hole{d}")  # complete: its broken flag (next to the hole) costs nothing
            key = f"s{s}_holed{d}"
            members.extend(_members(_good(key, 99)))
            damaged.append(f"{key}.jpg")
            samples, holes = samples + 1, holes + 1
            skipped["broken_member"] += 1
            good(f"after_hole{d}")
        good("last")
        assert shard_usable == USABLE_PER_SHARD, (s, shard_usable)
        usable += shard_usable
        samples += 6 + fillers
        path = folder / f"{s:05d}.tar"
        names = [m[0] for m in members]
        offsets = _write_tar(path, members)
        data = bytearray(path.read_bytes())
        for name in damaged:
            data[offsets[names.index(name)]] ^= 0xFF  # the name's first byte: the header checksum fails
        if s == SHARDS - 1:  # cut short 5 bytes into the last member (the last sample's json): still usable
            data = data[:offsets[-1] + 512 + 5]
        path.write_bytes(bytes(data))
    return {"shards": SHARDS, "samples": samples, "usable": usable, "skipped": dict(sorted(skipped.items())),
            "damaged_regions": holes, "bad_shards": 1}


def write_table(folder: Path, classes_folder: Path, seed: int = 0) -> tuple[int, dict, list[str], int, dict]:
    """The table (and the same images as class folders); returns rows, eval skips, train reasons, images, skips."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows: list[tuple[bytes, bytes, bytes]] = []
    eval_skips, folder_skips, n_images, train_reasons = Counter(), Counter(), 0, set()

    def add(name: str, data: bytes, ext: str, reason: str | None, caption: bytes = b"", label: str = "") -> None:
        nonlocal n_images
        colour = COLOURS[len(rows) % 3]
        file = f"img/{name}.{ext}"
        (folder / file).write_bytes(data)
        (classes_folder / colour).mkdir(parents=True, exist_ok=True)
        (classes_folder / colour / f"{name}.{ext}").write_bytes(data)
        n_images += 1
        rows.append((file.encode(), caption or f"a photo of {name}".encode(), (label or colour).encode()))
        if reason is not None:
            eval_skips[reason] += 1
            folder_skips[reason] += 1
            train_reasons.add(reason)

    for name, (make, ext, reason) in IMAGE_KINDS.items():
        for c in range(3):
            add(f"{name}_{c}", make(seed + c), ext, reason)
            add(f"good_{name}_{c}", encode(_img(seed + 100 + c)), "jpg", None)
    for c in range(3):  # hostile captions on good images (eval reads labels: these rows are usable there)
        for caption, reason in ((b"caf\xe9 \xff", "bad_text"), (b" ", "no_caption"), (b"b" * 200_000, "too_large")):
            add(f"caption_{reason}_{c}", encode(_img(seed + 200 + c)), "jpg", None, caption=caption)
            train_reasons.add(reason)
    for c in range(3):
        rows.append((f"img/missing_{c}.jpg".encode(), b"a photo", COLOURS[c].encode()))
        eval_skips["no_image"] += 1
        train_reasons.add("no_image")
    lines = [b"filepath,caption,label"] + [b",".join(row) for row in rows]
    (folder / "pairs.csv").write_bytes(b"\n".join(lines) + b"\n")
    return (len(rows), dict(sorted(eval_skips.items())), sorted(train_reasons), n_images,
            dict(sorted(folder_skips.items())))


def write_hostile(out: str | Path, seed: int = 0) -> Expected:
    """Writes the hostile shards, table and class folders under ``out`` (module docstring) and ``expected.json``.

    Returns:
        The counts each must give.
    """
    out = Path(out)
    expected = Expected(kinds=[*IMAGE_KINDS, *SIDECAR_KINDS, *TAR_KINDS])
    expected.shards = write_shards(out / "shards", seed)
    (expected.table_rows, expected.table_eval, expected.table_train_reasons, expected.folder_images,
     expected.folder_skipped) = write_table(out / "table", out / "classes", seed)
    (out / "expected.json").write_text(json.dumps(asdict(expected), indent=2) + "\n")
    return expected


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/helpers/hostile.py OUT_DIR")
    result = write_hostile(sys.argv[1])
    bad = sum(result.shards["skipped"].values())
    print(f"wrote {result.shards['samples']} tar samples ({bad} bad, {len(result.kinds)} kinds), "
          f"{result.table_rows} table rows to {sys.argv[1]}; expected counts in {sys.argv[1]}/expected.json")
