"""A small real collection for the server and page tests, written by hand in the layout of
src/clipforge/search/collection.py, and a live uvicorn server on a free port.

The collection's rows are the real embeddings (by a saved random-weight ``tiny-vit``) of real PNG files on disk, so
an image query with item i's file finds item i first (score 1), and ``/images/{id}`` has files to read.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 215, 40),
           "purple": (140, 50, 170), "orange": (240, 140, 30), "black": (20, 20, 20), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle")


def draw(i: int, size: int = 96) -> tuple[Image.Image, str]:
    """Item ``i``'s picture (a coloured shape on a noisy ground, different for every ``i``) and its caption."""
    rng = np.random.default_rng(i)
    colour = list(COLOURS)[i % len(COLOURS)]
    shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)]
    ground = rng.integers(90, 170, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(ground, "RGB")
    pen = ImageDraw.Draw(image)
    a, b = int(rng.integers(8, 30)), int(rng.integers(60, size - 6))
    box = (a, a, b, b)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[colour])
    else:
        pen.polygon([(a, b), (b, b), ((a + b) // 2, a)], fill=COLOURS[colour])
    return image, f"a {colour} {shape} (item {i})"


def make_collection(directory: Path, n: int = 120, part_size: int = 50, model: str = "tiny-vit",
                    seed: int = 0) -> Path:
    """A finished collection of ``n`` items in ``directory`` (parts of ``part_size``; the model saved in
    ``directory/model``); returns ``directory``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from clipforge.api import create_model, get_text_processor
    from clipforge.checkpoints.native import save_pretrained
    from clipforge.eval.loading import load_eval_model

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = create_model(model)
    saved = save_pretrained(net, directory / "model", get_text_processor(net))
    eval_model, name, _ = load_eval_model(str(saved), "cpu")
    (directory / "images").mkdir(exist_ok=True)
    files, captions = [], []
    for i in range(n):
        image, caption = draw(i)
        path = directory / "images" / f"{i:05d}.png"
        image.save(path)
        files.append(path)
        captions.append(caption)
    with torch.no_grad():
        rows = np.concatenate([eval_model.encode_images(torch.stack([eval_model.transform(Image.open(f).convert("RGB"))
                                                                     for f in files[s:s + 64]])).numpy()
                               for s in range(0, n, 64)])
    num_parts = max(1, -(-n // part_size))
    manifest: dict[str, Any] = {
        "format": "clipforge-collection", "version": 1,
        "model": {"spec": str(saved), "pretrained": None, "name": name, "family": "clip",
                  "fingerprint": eval_model.fingerprint(), "dim": int(rows.shape[1]), "scoring": eval_model.scoring},
        "data": {"path": str(directory / "images"), "kind": "folder"},
        "part_size": part_size, "num_parts": num_parts, "dtype": "float16", "modalities": ["image"], "complete": False,
    }
    (directory / "embed.json").write_text(json.dumps(manifest))
    for folder in ("img_emb", "metadata", "parts"):
        (directory / folder).mkdir(exist_ok=True)
    for k in range(num_parts):
        lo, hi = k * part_size, min(n, (k + 1) * part_size)
        np.save(directory / "img_emb" / f"img_emb_{k:04d}.npy", rows[lo:hi].astype(np.float16))
        table = pa.table({"row": pa.array(range(lo, hi), pa.int64()), "path": [str(f) for f in files[lo:hi]],
                          "caption": captions[lo:hi], "width": pa.array([96] * (hi - lo), pa.int32()),
                          "height": pa.array([96] * (hi - lo), pa.int32())})
        pq.write_table(table, directory / "metadata" / f"metadata_{k:04d}.parquet")
        (directory / "parts" / f"part_{k:04d}.json").write_text(json.dumps(
            {"part": k, "rows": hi - lo, "inputs": hi - lo, "skipped": {}, "seconds": 0.0}))
    manifest["complete"] = True
    (directory / "embed.json").write_text(json.dumps(manifest))
    return directory


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: Any, port: int | None = None) -> Iterator[str]:
    """Serves ``app`` with uvicorn on a thread; yields its base URL; stops it at the end."""
    import httpx
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the test server on {url} did not start")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
