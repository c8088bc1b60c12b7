"""``benchmarks/icons/curve.py``: the subsets read from the manifest, the curve's JSON summary, the plot and its
redraw from a saved JSON, and a tiny clipforge-only curve on a generated mini build (no network, no OpenCLIP)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def curve() -> ModuleType:
    return _load("icons_curve", ROOT / "benchmarks" / "icons" / "curve.py")


@pytest.fixture(scope="module")
def mini_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A 64 px build of the builder test's fake icon sets, with learning-curve subsets of 4 and 8 pairs."""
    builder_tests = _load("icons_builder_tests", Path(__file__).with_name("test_icon_builder.py"))
    build = _load("icons_build", ROOT / "benchmarks" / "icons" / "build.py")
    root = tmp_path_factory.mktemp("icons")
    node_modules = builder_tests.make_node_modules(root / "node_modules")
    out = root / "out"
    code = build.main(["--packages-dir", str(node_modules), "--out", str(out), "--sizes", "64",
                       "--eval-styles", *builder_tests.EVAL_STYLES, "--heldout-fraction", "0.25",
                       "--curve", "4", "8", "--workers", "1"])
    assert code == 0
    return out, json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _scores(cross: float, unseen: float) -> dict[str, float]:
    return {"cross_style_top1": cross, "unseen_concepts_top1": unseen, "retrieval_image_r1": cross / 2,
            "retrieval_text_r1": cross / 3, "train_s": 10.0}


def _hand_made(curve: ModuleType, tmp_path: Path) -> dict[str, Any]:
    subsets = [(1000, tmp_path / "curve" / "1000"), (5000, tmp_path / "curve" / "5000"), (13107, tmp_path / "train")]
    header = {"model": "tiny-rn", "image_size": 64, "samples": 25600, "seeds": [0, 1],
              "rows": ["openclip", "clipforge", "clippo"],
              "anchors": {"openclip": "openclip", "clipforge": "openclip", "clippo": "clippo"}}
    results = {str(n): {"openclip": [{"seed": 0, **_scores(0.01 * k, 0.02 * k)},
                                     {"seed": 1, **_scores(0.03 * k, 0.04 * k)}],
                        "clipforge": [{"seed": 0, **_scores(0.04 * k, 0.06 * k)},
                                      {"seed": 1, **_scores(0.04 * k, 0.06 * k)}],
                        "clippo": [{"seed": 0, **_scores(0.005 * k, 0.01 * k)}]}
               for k, (n, _) in enumerate(subsets, start=1)}
    return curve.curve_json(header, subsets, results, samples=25600)


def test_curve_json_summary(curve: ModuleType, tmp_path: Path) -> None:
    result = _hand_made(curve, tmp_path)
    assert result["sizes"] == [1000, 5000, 13107] and list(result["curve"]) == ["1000", "5000", "13107"]
    entry = result["curve"]["5000"]  # k = 2
    assert entry["pairs"] == 5000 and entry["passes"] == pytest.approx(5.12)
    assert entry["folder"] == str(tmp_path / "curve" / "5000")
    assert [s["seed"] for s in entry["results"]["openclip"]] == [0, 1]
    summary = entry["summary"]
    assert summary["openclip"]["cross_style_top1"]["mean"] == pytest.approx(0.04)
    assert summary["openclip"]["cross_style_top1"]["std"] == pytest.approx(math.sqrt(2) * 0.02)
    assert summary["openclip"]["cross_style_top1"]["n"] == 2 and "seed" not in summary["openclip"]
    assert summary["clipforge"]["cross_style_top1"]["std"] == pytest.approx(0.0)
    assert summary["clipforge"]["ratio_to_openclip"]["cross_style_top1"] == pytest.approx(2.0)
    assert summary["clipforge"]["ratio_to_openclip"]["unseen_concepts_top1"] == pytest.approx(0.12 / 0.06)
    assert "ratio_to_openclip" not in summary["clippo"] and summary["clippo"]["ratio_to_clippo"][
        "cross_style_top1"] == pytest.approx(1.0)
    assert summary["clippo"]["unseen_concepts_top1"] == {"mean": pytest.approx(0.02), "std": 0.0, "n": 1}
    partial = curve.curve_json({"anchors": {}}, [(4, tmp_path), (8, tmp_path)], {"4": {"x": [{"seed": 0, "a": 1.0}]}},
                               samples=16)
    assert partial["curve"]["8"] == {"pairs": 8, "passes": 2.0, "folder": str(tmp_path), "results": {},
                                     "summary": {}}  # an unfinished subset is there, empty


def test_plot_and_redraw_from_json(curve: ModuleType, tmp_path: Path) -> None:
    result = _hand_made(curve, tmp_path)
    path = curve.plot_curve(result, tmp_path / "plots" / "curve.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    with Image.open(path) as image:
        assert image.size == (1320, 504)  # two panels at 5.5 × 4.2 in each, 120 dpi
    saved = tmp_path / "curve.json"
    saved.write_text(json.dumps(result), encoding="utf-8")
    assert curve.main(["--plot-from", str(saved), "--plot", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="not a curve.py result"):
        curve.plot_curve({"results": {}}, tmp_path / "no.png")
    saved.write_text(json.dumps({"summary": {}}), encoding="utf-8")
    with pytest.raises(SystemExit):
        curve.main(["--plot-from", str(saved), "--plot", str(tmp_path / "no.png")])
    with pytest.raises(SystemExit):
        curve.main(["--plot-from", str(saved)])  # no --plot
    assert not (tmp_path / "no.png").exists()


def test_subsets_come_from_the_manifest(curve: ModuleType, mini_build: tuple[Path, dict[str, Any]],
                                        tmp_path: Path) -> None:
    out, manifest = mini_build
    subsets = curve.curve_subsets(out, 64)
    full = manifest["data"]["64"]["train"]["pairs"]
    assert [n for n, _ in subsets] == manifest["protocols"]["learning_curve"]["sizes"] == [4, 8, full]
    assert [f.relative_to(out).as_posix() for _, f in subsets] == ["64px/curve/4", "64px/curve/8", "64px/train"]
    with pytest.raises(ValueError, match="no data.224.curve"):
        curve.curve_subsets(out, 224)
    # A manifest whose count disagrees with the shards' stats.json is refused, naming both.
    fake = tmp_path / "fake"
    (fake / "64px" / "curve").mkdir(parents=True)
    (fake / "64px" / "curve" / "5").symlink_to(out / "64px" / "curve" / "4")
    (fake / "manifest.json").write_text(json.dumps({"data": {"64": {"curve": {"5": "64px/curve/5"}}}}))
    with pytest.raises(ValueError, match="4 samples, but .* says 5 pairs"):
        curve.curve_subsets(fake, 64)


@pytest.mark.slow
def test_tiny_curve_end_to_end(curve: ModuleType, mini_build: tuple[Path, dict[str, Any]], tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    """Two steps of the plain clipforge row on each subset of the mini build, one seed: the JSON's shape and the
    pair counts; then the PNG."""
    out, manifest = mini_build
    work, plot = tmp_path / "work", tmp_path / "curve.png"
    code = curve.main(["--data", str(out), "--work", str(work), "--rows", "clipforge", "--steps", "2",
                       "--batch-size", "4", "--warmup", "0", "--seeds", "0", "--threads", "1", "--plot", str(plot)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    sizes = manifest["protocols"]["learning_curve"]["sizes"]
    assert result["sizes"] == sizes and list(result["curve"]) == [str(n) for n in sizes]
    assert result["samples"] == 8 and result["seeds"] == [0] and result["recipes"] == {"clipforge": {}}
    for n in sizes:
        entry = result["curve"][str(n)]
        assert entry["pairs"] == n and entry["passes"] == pytest.approx(8 / n, abs=0.01)
        (scores,) = entry["results"]["clipforge"]
        assert scores["seed"] == 0 and set(scores) == {"seed", "train_s", *curve.compare.METRICS}
        assert all(0.0 <= scores[k] <= 1.0 for k in curve.compare.METRICS)
        assert set(entry["summary"]["clipforge"]) == {"train_s", *curve.compare.METRICS}  # no openclip: no ratio
        full = Path(entry["folder"]).name == "train"  # the full set's runs sit where compare.py --work puts them
        run = (work if full else work / "curve" / str(n)) / "clipforge" / "seed0"
        stats = json.loads((Path(entry["folder"]) / "stats.json").read_text())
        assert stats["samples"] == n  # the subset trained on is the manifest's
        assert f"urls: {entry['folder']}" in (run / "train.yaml").read_text()
    assert json.loads((work / "curve.json").read_text())["curve"] == result["curve"]
    assert plot.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_clippo_row_trains_on_the_mini_build(curve: ModuleType, mini_build: tuple[Path, dict[str, Any]],
                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The file's ``clippo`` row (96 px clippo-tiny on 64 px shards, its own overrides, its own anchor) trains and
    is scored, on the smallest subset."""
    out, _ = mini_build
    code = curve.main(["--data", str(out), "--work", str(tmp_path / "work"), "--rows", "clippo", "--subsets", "4",
                       "--steps", "2", "--batch-size", "4", "--warmup", "0", "--seeds", "0", "--threads", "1"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sizes"] == [4] and result["anchors"] == {"clippo": "clippo"}
    summary = result["curve"]["4"]["summary"]["clippo"]
    assert summary["ratio_to_clippo"]["train_s"] == pytest.approx(1.0)
    saved = (tmp_path / "work" / "curve" / "4" / "clippo" / "seed0" / "config.yaml").read_text()
    assert "clippo-tiny" in saved and "logit_scale_lr_mult: 40" in saved
