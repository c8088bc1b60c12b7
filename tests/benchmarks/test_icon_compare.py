"""The pieces of ``benchmarks/icons/compare.py`` that need no training run: the OpenCLIP model config it writes
(the same shape as clipforge's), the shard copy OpenCLIP reads, the train configs and the summary maths."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from clipforge import create_model
from helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    return load_script("benchmarks/icons/compare.py", "icons_compare")


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


def test_base_train_config(compare: ModuleType, tmp_path: Path) -> None:
    base = compare.base_train_config(tmp_path, 64, "tiny-rn", {"text": {"layers": 2}}, 400, 64, 5e-4, 0.1, 30)
    assert base["data"] == {"kind": "shards", "urls": str(tmp_path / "64px" / "train"), "augment": True,
                            "num_workers": 0}
    assert {s["name"] for s in base["eval"]["sets"]} == set(compare.EVAL_SETS)
    assert compare.Setup(tmp_path).base_config(tmp_path / "64px" / "train") == base
    assert compare.merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def _contains(full: Any, part: Any) -> bool:
    """Whether ``part``'s keys and values are all in ``full`` (nested; lists and tuples alike)."""
    if isinstance(part, dict):
        return isinstance(full, dict) and all(k in full and _contains(full[k], v) for k, v in part.items())
    if isinstance(part, (list, tuple)):
        return isinstance(full, (list, tuple)) and len(full) == len(part) and all(map(_contains, full, part))
    return bool(full == part)


def _load_rows() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((ROOT / "benchmarks" / "icons" / "recipes.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("row", list(_load_rows()))
def test_recipes_file_row_makes_a_train_config(compare: ModuleType, row: str, tmp_path: Path) -> None:
    """Every row of recipes.yaml, merged over the base, is a config ``clipforge train --config`` accepts."""
    import yaml

    from clipforge.train.config import config_to_dict, load_config

    recipes = compare.load_recipes()
    assert list(recipes) == list(_load_rows()) and compare.OPENCLIP not in recipes
    recipe = recipes[row]
    base = compare.Setup(tmp_path).base_config(tmp_path / "64px" / "train")
    merged = compare.row_config(base, recipe)
    assert "anchor" not in merged and merged["data"]["kind"] == "shards"
    assert merged["steps"] * merged["batch_size"] == 400 * 64  # every row trains the same samples
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**merged, "seed": 0, "output_dir": str(tmp_path / "run")}), encoding="utf-8")
    config = load_config(path)  # what `clipforge train --config` does; the model config is built and checked
    assert config.model == recipe.get("model", "tiny-rn")
    assert config.model_overrides == recipe.get("model_overrides", {"text": {"layers": 2}})
    resolved = config_to_dict(config)
    for key, value in recipe.items():
        if key not in compare.RUNNER_KEYS:
            assert _contains(resolved[key], value), (row, key, resolved[key], value)
    anchor = compare.anchor_of(row, recipes)
    assert anchor == recipe.get("anchor", "openclip") and (anchor == "openclip" or anchor in recipes)
    if config.model_config().family == "clippo":
        assert anchor != "openclip"  # a one-tower row compares with the plain CLIPPO row


def test_row_config_merges_and_replaces(compare: ModuleType, tmp_path: Path) -> None:
    base = compare.Setup(tmp_path, text_layers=3).base_config(tmp_path / "sub")
    before = json.dumps(base, sort_keys=True)
    merged = compare.row_config(base, {"label_smoothing": 0.1, "optim": {"lr": 1e-3}, "anchor": "x"})
    assert merged["optim"] == {**base["optim"], "lr": 1e-3}  # nested dicts merged
    assert merged["label_smoothing"] == 0.1 and "anchor" not in merged
    assert merged["model"] == "tiny-rn" and merged["model_overrides"] == {"text": {"layers": 3}}
    assert merged["data"]["urls"] == str(tmp_path / "sub")
    clippo = compare.row_config(base, {"model": "clippo-tiny", "model_overrides": {}, "anchor": "clippo"})
    assert clippo["model"] == "clippo-tiny" and clippo["model_overrides"] == {}  # replaced, not merged
    siglip = compare.row_config(base, {"model_overrides": {"init_logit_bias": -10.0}})
    assert siglip["model_overrides"] == {"init_logit_bias": -10.0}  # the base's text depth is gone too
    assert json.dumps(base, sort_keys=True) == before  # the base is not changed
    recipes = {"c": {"anchor": "c"}, "d": {}}
    assert [compare.anchor_of(r, recipes) for r in ("c", "d", "openclip")] == ["c", "openclip", "openclip"]


def test_a_rows_batch_keeps_the_sample_budget(compare: ModuleType, tmp_path: Path) -> None:
    base = compare.Setup(tmp_path, steps=400, batch_size=64, warmup=30).base_config(tmp_path)
    wide = compare.row_config(base, {"batch_size": 128, "optim": {"lr": 2e-3}})
    assert (wide["batch_size"], wide["steps"]) == (128, 200)  # 25,600 samples either way
    assert wide["schedule"] == base["schedule"] and (base["batch_size"], base["steps"]) == (64, 400)
    assert compare.row_config(base, {"batch_size": 32})["steps"] == 800
    with pytest.raises(ValueError, match="batch_size 48 does not divide the budget of 25600 samples"):
        compare.row_config(base, {"batch_size": 48})


@pytest.mark.parametrize(("text", "match"), [
    ("openclip: {}\n", "always a row"),
    ("a: {anchor: b}\n", "anchor 'b' is not a row"),
    ("a: {model_overrides: [1]}\n", "model_overrides must be a mapping"),
    ("a: {model: 3}\n", "model must be a preset name"),
    ("a: {steps: 200}\n", "row 'a': a row cannot set steps"),
    ("a: {batch_size: 0}\n", "batch_size must be a positive integer, got 0"),
    ("a: {batch_size: 12.5}\n", "batch_size must be a positive integer"),
    ("a: [1, 2]\n", "row 'a': expected a mapping"),
    ("- a\n", "expected a mapping of row name"),
])
def test_load_recipes_refuses(compare: ModuleType, tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "recipes.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        compare.load_recipes(path)


def test_rows_come_from_the_recipes_file(compare: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import argparse

    path = tmp_path / "rows.yaml"
    path.write_text("plain:\nsmooth: {label_smoothing: 0.1}\nclippo: {anchor: clippo, model: clippo-tiny}\n",
                    encoding="utf-8")
    assert compare.load_recipes(path)["plain"] == {}

    def parse(*argv: str) -> tuple[argparse.Namespace, Any]:
        p = argparse.ArgumentParser()
        compare.add_arguments(p)
        args = p.parse_args(["--data", str(tmp_path), "--work", str(tmp_path / "w"), "--recipes", str(path), *argv])
        return args, compare.parse_setup(p, args)

    args, (setup, recipes) = parse("--steps", "10", "--batch-size", "8")
    assert args.rows == ["openclip", "plain", "smooth", "clippo"] and setup.samples == 80
    header = compare.describe(setup, args.rows, recipes)
    assert header["recipes"] == {"openclip": "open_clip_train.main", "plain": {}, "smooth": {"label_smoothing": 0.1},
                                 "clippo": {"anchor": "clippo", "model": "clippo-tiny"}}
    assert header["anchors"] == {"openclip": "openclip", "plain": "openclip", "smooth": "openclip",
                                 "clippo": "clippo"}
    args, _ = parse("--rows", "smooth")
    assert args.rows == ["smooth"] and "no ratio_to_openclip" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--rows", "clipforge+ema")  # a row of the default file, not of this one
    assert "invalid choice: ['clipforge+ema']" in capsys.readouterr().err


def test_open_clip_inputs_written_once(compare: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "train"
    src.mkdir()
    _write_tar(src / "00000.tar", {f"{k:08d}": (_png((0, 0, 0, 255)), "ring") for k in range(3)})
    shards = compare.open_clip_inputs(src, tmp_path / "out", pairs=3, samples=7)  # 3 passes of 3 pairs
    assert len(shards) == 3 and all(p.exists() for p in shards)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("rewritten")

    monkeypatch.setattr(compare, "open_clip_shards", fail)
    assert compare.open_clip_inputs(src, tmp_path / "out", pairs=3, samples=9) == shards  # the same 3 passes
    with pytest.raises(AssertionError, match="rewritten"):
        compare.open_clip_inputs(src, tmp_path / "out", pairs=3, samples=10)  # 4 passes: a new copy
    monkeypatch.undo()
    with pytest.raises(ValueError, match="fewer than the 40 budget"):
        compare.open_clip_inputs(src, tmp_path / "out2", pairs=10, samples=40)  # the pairs are not 10


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


def test_summarise_divides_by_each_rows_anchor(compare: ModuleType) -> None:
    results = {"openclip": [{"acc": 0.1}], "clipforge": [{"acc": 0.3}], "clippo": [{"acc": 0.2}],
               "clippo+x": [{"acc": 0.5}]}
    summary = compare.summarise(results, anchors={"clippo": "clippo", "clippo+x": "clippo"})
    assert summary["clipforge"]["ratio_to_openclip"]["acc"] == pytest.approx(3.0)
    assert summary["clippo+x"]["ratio_to_clippo"]["acc"] == pytest.approx(2.5)
    assert summary["clippo"]["ratio_to_clippo"]["acc"] == pytest.approx(1.0)
    assert "ratio_to_openclip" not in summary["clippo+x"] and "ratio_to_clippo" not in summary["clipforge"]
    alone = compare.summarise({"clippo+x": [{"acc": 0.5}]}, anchors={"clippo+x": "clippo"})
    assert set(alone["clippo+x"]) == {"acc"}  # no anchor results: no ratio


def test_final_metrics_reads_last_record(compare: ModuleType, tmp_path: Path) -> None:
    keys = list(compare.METRICS.values())
    lines = [{"step": 10, "loss": 1.0}, {"step": 400, **{k: 0.25 for k in keys}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    assert compare.final_metrics(tmp_path) == {k: 0.25 for k in compare.METRICS}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(lines[0]) + "\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="cross_style_top1"):
        compare.final_metrics(tmp_path)


def test_a_finished_run_is_not_trained_again(compare: ModuleType, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[tuple[str, int]] = []

    def fake(setup, row, recipes, train_dir, pairs, work, seed):
        trained.append((row, seed))
        return {"cross_style_top1": 0.1 * seed, "train_s": 1.0}

    monkeypatch.setattr(compare, "_train_row", fake)
    setup, recipes = compare.Setup(tmp_path), {"a": {"label_smoothing": 0.1}, "b": {}}
    first = compare.run_row(setup, "a", recipes, tmp_path / "train", 10, tmp_path / "work", 2)
    again = compare.run_row(setup, "a", recipes, tmp_path / "train", 10, tmp_path / "work", 2)
    assert first == again and trained == [("a", 2)]
    changed = {"a": {"label_smoothing": 0.2}, "b": {}}  # another recipe under the same name trains again
    compare.run_row(setup, "a", changed, tmp_path / "train", 10, tmp_path / "work", 2)
    assert trained == [("a", 2), ("a", 2)]
    faster = compare.Setup(tmp_path, lr=2e-3)  # so does the same recipe under another shared learning rate
    compare.run_row(faster, "a", changed, tmp_path / "train", 10, tmp_path / "work", 2)
    assert trained == [("a", 2), ("a", 2), ("a", 2)]
