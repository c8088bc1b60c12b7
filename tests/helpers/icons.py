"""A small icon-benchmark evaluation folder for the tests of benchmarks/icons/: coloured squares over a few class
names, each image with the .json naming its set and style that build.py writes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

RN = {"embed_dim": 16, "vision": {"image_size": 32, "width": 8, "heads": 2},
      "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}
CLASSES = ["house", "star", "bell"]
STYLES = ["ph:duotone", "tabler:filled"]


def write_folder(folder: Path, images: int = 18, json_for: bool = True) -> None:
    """A CLIP_benchmark zero-shot folder of coloured squares over CLASSES in two shards, each image with a .json
    naming its set and style (as build.py writes)."""
    (folder / "test").mkdir(parents=True)
    (folder / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("an icon of a {c}.\na {c}.\n")
    (folder / "test" / "nshards.txt").write_text("2\n")
    for shard in range(2):
        with tarfile.open(folder / "test" / f"{shard}.tar", "w") as tar:
            for i in range(shard, images, 2):
                fields = {"png": None, "cls": str(i % 3).encode()}
                image = Image.new("RGB", (32, 32), (40 * (i % 6), 255 - 20 * i, 90 + 9 * i))
                buffer = io.BytesIO()
                image.save(buffer, "PNG")
                fields["png"] = buffer.getvalue()
                if json_for or i:
                    set_, style = STYLES[i % 2].split(":")
                    fields["json"] = json.dumps({"set": set_, "style": style}).encode()
                for ext, data in fields.items():
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
