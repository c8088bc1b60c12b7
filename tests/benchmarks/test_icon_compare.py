"""The pieces of ``benchmarks/icons/compare.py`` that need no training run: the OpenCLIP model config it writes
(the same shape as clipforge's), the shard copy OpenCLIP reads, the train configs and the summary maths."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from clipforge import create_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("icons_compare", ROOT / "benchmarks" / "icons" / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["tiny-rn", "tiny-vit"])
def test_open_clip_config_has_clipforge_shape(compare: ModuleType, preset: str, tmp_path: Path) -> None:
    open_clip = pytest.importorskip("open_clip")
    overrides: dict[str, Any] = {"text": {"layers": 2}}
    config = compare.model_config(preset, overrides)
    path = compare.write_open_clip_config(config, tmp_path)
    assert path.name == f"{compare.OPEN_CLIP_MODEL}.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    theirs = open_clip.model.CLIP(**cfg)
    ours = create_model(preset, text={"layers": 2})
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    assert len(shapes) > 10 and cfg["text_cfg"]["layers"] == 2 and cfg["quick_gelu"] is False
    assert "positional_embedding" in shapes and shapes["positional_embedding"][0] == config.text.context_length


def _png(rgba: tuple[int, int, int, int]) -> bytes:
    out = io.BytesIO()
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (4, 4), rgba), (2, 2))
    image.save(out, format="PNG")
    return out.getvalue()


def _write_tar(path: Path, samples: dict[str, tuple[bytes, str]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, (png, caption) in samples.items():
            for ext, data in (("png", png), ("txt", caption.encode()), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_open_clip_shards_white_rgb_one_caption_per_pass(compare: ModuleType, tmp_path: Path) -> None:
    src = tmp_path / "train"
    src.mkdir()
    captions = "an icon of a house.\na house icon.\nhouse"
    _write_tar(src / "00000.tar", {"00000000": (_png((0, 0, 0, 255)), captions),
                                    "00000001": (_png((255, 0, 0, 255)), "a red square.\nsquare")})
    _write_tar(src / "00001.tar", {"00000002": (_png((0, 0, 0, 255)), "ring")})
    shards, count = compare.open_clip_shards(src, tmp_path / "out", passes=3)
    assert [p.name for p in shards] == [f"{i:05d}.tar" for i in range(6)] and count == 9
    keys: list[str] = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                stem, ext = member.name.split(".", 1)
                if ext == "png":
                    image = Image.open(io.BytesIO(data))
                    assert image.mode == "RGB"
                    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent → white, not black
                    assert image.getpixel((3, 3)) in {(0, 0, 0), (255, 0, 0)}
                    keys.append(stem)
                elif ext == "txt":
                    assert "\n" not in data.decode() and data.decode() in captions + "\na red square.\nsquare\nring"
    assert len(keys) == len(set(keys)) == 9  # keys unique across passes


def test_open_clip_shards_needs_tars(compare: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no .tar shards"):
        compare.open_clip_shards(tmp_path, tmp_path / "out", passes=1)


def test_train_config_and_recipes(compare: ModuleType, tmp_path: Path) -> None:
    from clipforge.config import from_dict
    from clipforge.train.config import TrainConfig

    base = compare.base_train_config(tmp_path, 64, "tiny-rn", {"text": {"layers": 2}}, 400, 64, 5e-4, 0.1, 30)
    assert base["data"] == {"kind": "shards", "urls": str(tmp_path / "64px" / "train"), "augment": True,
                            "num_workers": 0}
    assert {s["name"] for s in base["eval"]["sets"]} == set(compare.EVAL_SETS)
    for row, extra in compare.RECIPES.items():
        merged = compare.merge(base, extra)
        assert merged["optim"] == base["optim"] and merged["steps"] == 400, row
        config = from_dict(TrainConfig, {**merged, "eval": {"every": 0}})  # the folders do not exist here
        assert config.label_smoothing == extra.get("label_smoothing", 0.0)
        assert (config.ema is None) == ("ema" not in extra)
    assert compare.merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_open_clip_command_budget(compare: ModuleType, tmp_path: Path) -> None:
    shards = [tmp_path / f"{i:05d}.tar" for i in range(28)]
    command = compare.open_clip_command(shards, 25600, tmp_path / "clipforge-icons.json", tmp_path, 1, 64,
                                        5e-4, 0.1, 30, 2)
    args = dict(zip(command[5::2], command[6::2]))
    assert args["--train-data"] == str(tmp_path / "{00000..00027}.tar")
    assert (args["--train-num-samples"], args["--epochs"], args["--batch-size"]) == ("25600", "1", "64")
    assert args["--model"] == "clipforge-icons" and args["--seed"] == "1" and args["--device"] == "cpu"


def test_summarise_maths(compare: ModuleType) -> None:
    results = {"openclip": [{"acc": 0.1, "train_s": 10.0}, {"acc": 0.3, "train_s": 20.0}],
               "clipforge": [{"acc": 0.4, "train_s": 12.0}, {"acc": 0.6, "train_s": 14.0}],
               "one": [{"acc": 0.5, "train_s": 1.0}]}
    summary = compare.summarise(results)
    assert summary["openclip"]["acc"]["mean"] == pytest.approx(0.2)
    assert summary["openclip"]["acc"]["std"] == pytest.approx(math.sqrt(0.02))  # n − 1: (0.1² + 0.1²) / 1
    assert summary["clipforge"]["ratio_to_openclip"]["acc"] == pytest.approx(2.5)
    assert summary["clipforge"]["ratio_to_openclip"]["train_s"] == pytest.approx(13 / 15)
    assert summary["openclip"]["ratio_to_openclip"]["acc"] == pytest.approx(1.0)
    assert summary["one"]["acc"] == {"mean": 0.5, "std": 0.0, "n": 1}
    zero = compare.summarise({"openclip": [{"acc": 0.0}], "x": [{"acc": 0.2}]})
    assert zero["x"]["ratio_to_openclip"]["acc"] is None
    assert "ratio_to_openclip" not in compare.summarise({"x": [{"acc": 0.2}]})["x"]


def test_final_metrics_reads_last_record(compare: ModuleType, tmp_path: Path) -> None:
    keys = list(compare.METRICS.values())
    lines = [{"step": 10, "loss": 1.0}, {"step": 400, **{k: 0.25 for k in keys}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    assert compare.final_metrics(tmp_path) == {k: 0.25 for k in compare.METRICS}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(lines[0]) + "\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="cross_style_top1"):
        compare.final_metrics(tmp_path)
