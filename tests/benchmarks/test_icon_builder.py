"""``benchmarks/icons/build.py`` on a fake ``node_modules`` of tiny IconifyJSON sets (no npm, no network): emoji
sets left out, concepts and styles, RGBA PNGs, the protocols' splits, and the outputs read by clipforge's own
shard reader and evaluation datasets."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from clipforge.data import build_source
from clipforge.data.config import ShardsDataConfig
from clipforge.data.shards import inspect_shards
from clipforge.eval.datasets import open_dataset

ROOT = Path(__file__).resolve().parents[2]
SIZES = (64, 224)
EVAL_STYLES = ("shapes:fill", "lines")  # one style of the multi-style set, and a whole set
SHAPES = {  # concept -> an SVG body on a 24-unit grid
    "square": '<rect x="4" y="4" width="16" height="16"/>',
    "circle": '<circle cx="12" cy="12" r="8"/>',
    "house": '<path d="M3 12L12 3l9 9v9H3z"/>',
    "triangle": '<path d="M12 3l9 18H3z"/>',
    "diamond": '<path d="M12 2l10 10l-10 10L2 12z"/>',
    "cross": '<path d="M10 3h4v7h7v4h-7v7h-4v-7H3v-4h7z"/>',
    "bar": '<rect x="3" y="10" width="18" height="4"/>',
    "ring": '<circle cx="12" cy="12" r="9" stroke-width="3" fill="none"/>',
}
LICENSE_TEXT = "MIT License\n\nCopyright (c) the shapes authors\n"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("icons_build", ROOT / "benchmarks" / "icons" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _load_script()


def _package(root: Path, prefix: str, icons: dict[str, Any], info: dict[str, Any], meta: dict[str, Any] | None = None,
             aliases: dict[str, Any] | None = None, license_text: str | None = None, **size: int) -> None:
    folder = root / "@iconify-json" / prefix
    folder.mkdir(parents=True)
    data = {"prefix": prefix, "icons": icons, "aliases": aliases or {}, **size}
    (folder / "icons.json").write_text(json.dumps(data))
    (folder / "info.json").write_text(json.dumps({"prefix": prefix, **info}))
    (folder / "metadata.json").write_text(json.dumps(meta or {}))
    (folder / "package.json").write_text(json.dumps({"name": f"@iconify-json/{prefix}", "version": "9.9.9"}))
    if license_text is not None:
        (folder / "LICENSE").write_text(license_text)


def make_node_modules(root: Path) -> Path:
    """Three sets to keep (``shapes``: regular/bold/fill; ``lines``: one style, 16-unit and non-square boxes) and
    two emoji sets (by prefix, by category), plus names the builder must drop."""
    shapes: dict[str, Any] = {}
    for concept, body in SHAPES.items():
        g = f'<g fill="currentColor" stroke="currentColor" stroke-width="1">{body}</g>'
        shapes[concept] = {"body": g.replace('fill="currentColor"', 'fill="none"')}
        shapes[f"{concept}-bold"] = {"body": g.replace('fill="currentColor"', 'fill="none"').replace('="1"', '="3"')}
        shapes[f"{concept}-fill"] = {"body": g}
    shapes["square-2"] = {"body": '<rect x="6" y="6" width="12" height="12" fill="currentColor"/>'}  # a variant
    shapes["123"] = {"body": '<rect x="1" y="1" width="5" height="5"/>'}  # numeric only: dropped
    shapes["a-b"] = {"body": '<rect x="2" y="2" width="5" height="5"/>'}  # no word: dropped
    shapes["old-thing"] = {"body": '<rect x="3" y="3" width="5" height="5"/>', "hidden": True}
    shapes["copy-of-circle"] = dict(shapes["circle"])  # the same body again: dropped
    meta = {"suffixes": {"": "Regular", "bold": "Bold", "fill": "Fill"},
            "categories": {"Buildings": ["house", "house-bold", "house-fill"]}}
    info = {"name": "Shapes", "author": {"name": "Shape Co", "url": "https://example.org/shapes"},
            "license": {"title": "MIT", "spdx": "MIT", "url": "https://example.org/shapes/LICENSE"}}
    _package(root, "shapes", shapes, info, meta, aliases={"home": {"parent": "house"}}, license_text=LICENSE_TEXT,
             width=24, height=24)
    lines = {c: {"body": f'<g transform="scale(0.6667)" fill="none" stroke="currentColor">{b}</g>'}
             for c, b in SHAPES.items()}
    lines["bar"] = {"body": '<rect x="1" y="6" width="18" height="4" fill="currentColor"/>', "width": 20}
    _package(root, "lines", lines, {"name": "Lines", "author": {"name": "Line Person"},
                                    "license": {"title": "Apache 2.0", "spdx": "Apache-2.0",
                                                "url": "https://example.org/lines"}}, width=16, height=16)
    emoji = {"grinning-face": {"body": '<circle cx="8" cy="8" r="7" fill="#fc0"/>'},
             "house": {"body": '<path d="M1 8L8 1l7 7v7H1z" fill="#c60"/>'}}
    _package(root, "twemoji", emoji, {"name": "Twitter Emoji", "category": "Emoji"}, width=16, height=16)
    _package(root, "smileys", emoji, {"name": "Smileys", "category": "Emoji"}, width=16, height=16)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, script: ModuleType) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("icons")
    node_modules = make_node_modules(root / "node_modules")
    out = root / "out"
    code = script.main(["--packages-dir", str(node_modules), "--out", str(out), "--sizes", *map(str, SIZES),
                        "--eval-styles", *EVAL_STYLES, "--heldout-fraction", "0.25", "--curve", "4", "8", "100",
                        "--workers", "1"])
    assert code == 0
    return out, json.loads((out / "manifest.json").read_text())


def _index(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    return {(r["set"], r["name"]): r for r in rows}


def _metas(folder: Path) -> list[dict[str, Any]]:
    """The json member of every sample in the folder's shards (training or CLIP_benchmark ``test/``)."""
    metas = []
    for shard in sorted(folder.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            metas += [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    return metas


def test_emoji_sets_are_left_out(built, script):
    out, manifest = built
    assert manifest["skipped_sets"] == {"smileys": "emoji set", "twemoji": "emoji set"}
    assert {s["prefix"] for s in manifest["sets"]} == {"lines", "shapes"}
    assert {key[0] for key in _index(out)} == {"lines", "shapes"}
    for prefix in ("twemoji", "noto", "noto-v1", "openmoji", "fluent-emoji", "fluent-emoji-flat", "emojione",
                   "emojione-monotone", "fxemoji", "streamline-emojis"):
        assert script.iconify.is_emoji_set(prefix), prefix
    assert script.iconify.is_emoji_set("anything", {"category": "Emoji"})
    assert not any(script.iconify.is_emoji_set(p) for p in ("ph", "tabler", "material-symbols", "lucide", "mdi"))


def test_concepts_and_styles(built):
    out, manifest = built
    index = _index(out)
    assert (index[("shapes", "house-bold")]["concept"], index[("shapes", "house-bold")]["style"]) == ("house", "bold")
    assert (index[("shapes", "square-2")]["concept"], index[("shapes", "square-2")]["style"]) == ("square", "regular")
    assert index[("shapes", "circle-fill")]["style"] == "fill" and index[("lines", "ring")]["style"] == "regular"
    for dropped in ("123", "a-b", "old-thing", "home", "copy-of-circle"):
        assert ("shapes", dropped) not in index
    assert manifest["summary"]["sets"]["shapes"]["dropped"] == {"alias": 1, "duplicate": 1, "hidden": 1,
                                                                "not_a_word": 2}
    assert manifest["summary"]["concepts"]["all"] == len(SHAPES)


@pytest.mark.parametrize(("name", "expected"), [
    ("house-bold", ("house", "bold")), ("home-outline-rounded", ("home", "outline-rounded")),
    ("home-rounded", ("home", "rounded")), ("arrow_down-2", ("arrow down", "regular")),
    ("add-alt", ("add", "regular")), ("3d-rotation-sharp", ("3d rotation", "sharp")), ("123", None), ("x", None),
    ("bold", ("bold", "regular")),
])
def test_split_name(script, name, expected):
    styles = {"": "regular", "bold": "bold", "rounded": "rounded", "outline-rounded": "outline-rounded",
              "sharp": "sharp"}
    assert script.iconify.split_name(name, styles) == expected


def test_captions_name_the_concept_style_and_category(script, tmp_path):
    sets, _ = script.load_sets(make_node_modules(tmp_path / "nm"), ["shapes"])
    icons = {i.name: i for i in sets[0].icons}
    house = icons["house-fill"].captions()
    assert house[0] == "an icon of a house." and "house" in house
    assert "a filled icon of a house." in house and "a house icon, buildings." in house
    assert not any("filled" in c for c in icons["house-fill"].captions(styled=False))
    assert not any("regular" in c or "building" in c for c in icons["square"].captions())
    assert icons["square-2"].concept == "square" and icons["square-2"].box == (0, 0, 24, 24)


def test_pngs_are_rgba_with_transparency_at_each_size(built):
    out, _ = built
    for size in SIZES:
        for folder in (out / f"{size}px" / "train", out / f"{size}px" / "eval" / "cross_style_zeroshot"):
            with tarfile.open(sorted(folder.rglob("*.tar"))[0]) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith(".png"))
                image = Image.open(io.BytesIO(tar.extractfile(member).read()))
            assert image.mode == "RGBA" and image.size == (size, size)
            low, high = image.getchannel("A").getextrema()
            assert low == 0 and high == 255  # a transparent background and an opaque drawing


def test_protocol_splits_are_disjoint(built):
    out, manifest = built
    cross, unseen = manifest["protocols"]["cross_style"], manifest["protocols"]["unseen_concepts"]
    assert cross["eval_styles"] == ["lines:regular", "shapes:fill"]
    assert cross["train_styles"] == ["shapes:bold", "shapes:regular"]
    heldout = set(unseen["heldout_concepts"])
    assert len(heldout) == 2  # 25% of 8 concepts
    for size in SIZES:
        root = out / f"{size}px"
        train = _metas(root / "train")
        assert len(train) == manifest["summary"]["splits"]["train"] > 0
        assert not {m["concept"] for m in train} & heldout
        assert {f"{m['set']}:{m['style']}" for m in train} <= set(cross["train_styles"])
        seen = {m["concept"] for m in train}
        cross_metas = _metas(root / "eval" / "cross_style_zeroshot")
        assert cross_metas and {f"{m['set']}:{m['style']}" for m in cross_metas} <= set(cross["eval_styles"])
        assert {m["concept"] for m in cross_metas} <= seen
        retrieval = _metas(root / "eval" / "cross_style_retrieval")
        assert len(retrieval) == len({m["concept"] for m in retrieval}) == len({m["concept"] for m in cross_metas})
        unseen_metas = _metas(root / "eval" / "unseen_concepts_zeroshot")
        assert unseen_metas and {m["concept"] for m in unseen_metas} == heldout
        assert {f"{m['set']}:{m['style']}" for m in unseen_metas} <= set(cross["train_styles"])
        # The learning curve: nested prefixes of the training order; 100 is more than there is.
        curve = [[(m["set"], m["name"]) for m in _metas(root / "curve" / str(n))] for n in (4, 8)]
        order = [(m["set"], m["name"]) for m in train]
        assert [len(c) for c in curve] == [4, 8] and set(curve[0]) <= set(curve[1]) <= set(order)
        assert sorted(curve[1]) == sorted(order[:8])
    assert manifest["protocols"]["learning_curve"]["skipped_sizes"] == [100]


def test_shards_read_by_clipforges_reader(built):
    out, manifest = built
    train = out / "64px" / "train"
    report = inspect_shards(str(train))
    assert report["usable"] == report["samples"] == manifest["summary"]["splits"]["train"]
    assert report["skipped"] == {} and report["shards"] >= 2
    source = build_source(ShardsDataConfig(**manifest["data"]["64"]["train"]["data"], augment=False))
    sample = next(iter(source))
    data, captions = source.parts(sample)
    image = source.decode(data)
    meta = json.loads(sample["json"])
    assert image.mode == "RGB" and image.size == (64, 64)
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent corner composited on white
    assert len(captions) >= 5 and meta["concept"] in captions[0]


def test_eval_folders_read_by_open_dataset(built):
    out, manifest = built
    root = out / "224px" / "eval"
    zeroshot = open_dataset(root / "cross_style_zeroshot")
    assert zeroshot.task == "classification" and "{c}" in zeroshot.templates[0]
    classes = (root / "cross_style_zeroshot" / "classnames.txt").read_text().split("\n")[:-1]
    assert zeroshot.classes == classes and len(classes) == len(SHAPES) - 2  # every training concept
    samples = list(zeroshot)
    assert len(samples) == manifest["summary"]["splits"]["cross_style_zeroshot"] and not zeroshot.skipped
    metas = _metas(root / "cross_style_zeroshot")
    assert [classes[s.label] for s in samples] == [m["concept"] for m in metas]
    assert samples[0].image.size == (224, 224)
    unseen = open_dataset(root / "unseen_concepts_zeroshot")
    assert unseen.classes == manifest["protocols"]["unseen_concepts"]["heldout_concepts"]
    assert {unseen.classes[s.label] for s in unseen} == set(unseen.classes)
    retrieval = open_dataset(root / "cross_style_retrieval")
    items = list(retrieval)
    assert retrieval.task == "retrieval" and items and all(s.captions for s in items)
    assert not any("fill" in c for s in items for c in s.captions)  # no style words in retrieval captions


def test_licences_written(built):
    out, manifest = built
    assert (out / "licenses" / "shapes.txt").read_text() == LICENSE_TEXT
    lines = (out / "licenses" / "lines.txt").read_text()
    assert "Apache-2.0" in lines and "https://example.org/lines" in lines and "ships no LICENSE" in lines
    record = json.loads((out / "licenses" / "shapes.json").read_text())
    assert record["license"]["spdx"] == "MIT" and record["author"]["name"] == "Shape Co"
    assert record["version"] == "9.9.9" and record["license_file"] == "LICENSE"
    assert manifest["licenses"]["lines"] == {"json": "licenses/lines.json", "text": "licenses/lines.txt",
                                             "spdx": "Apache-2.0", "title": "Apache 2.0"}


def test_same_seed_same_split_and_seed_matters(script, tmp_path):
    sets, _ = script.load_sets(make_node_modules(tmp_path / "nm"), ["shapes", "lines"])
    icons = [i for s in sets for i in s.icons]
    plans = [script.plan(icons, EVAL_STYLES, 0.25, (4,), seed) for seed in (0, 0, 1, 2, 3, 4, 5)]
    assert plans[0].heldout == plans[1].heldout and plans[0].train == plans[1].train
    assert len({tuple(p.heldout) for p in plans}) > 1
    with pytest.raises(ValueError, match="evaluation styles"):
        script.plan(icons, ("nothing-matches",), 0.25, (4,), 0)


def test_refuses_a_non_empty_out_and_a_missing_set(script, tmp_path, capsys):
    node_modules = make_node_modules(tmp_path / "nm")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    assert script.main(["--packages-dir", str(node_modules), "--out", str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert script.main(["--packages-dir", str(node_modules), "--out", str(tmp_path / "o2"), "--sets", "nope"]) == 2
    assert "@iconify-json/nope is not installed" in capsys.readouterr().err


def test_install_runs_npm_with_pinned_versions_once(script, tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"  # a stand-in npm: records its arguments and "installs" each package's package.json
    npm.write_text(f"""#!{sys.executable}
import json, pathlib, sys
args = sys.argv[1:]
open({str(calls)!r}, "a").write(" ".join(args) + "\\n")
prefix = pathlib.Path(args[args.index("--prefix") + 1])
for spec in (a for a in args if a.startswith("@iconify-json/")):
    name, version = spec.rsplit("@", 1)
    (prefix / "node_modules" / name).mkdir(parents=True, exist_ok=True)
    (prefix / "node_modules" / name / "package.json").write_text(json.dumps({{"version": version}}))
""")
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cache = tmp_path / "cache"
    assert script.install(cache, ["ph", "tabler@1.0.0"]) == cache / "node_modules"
    assert script.install(cache, ["ph", "tabler@1.0.0"]) == cache / "node_modules"  # already there: no npm
    lines = calls.read_text().splitlines()
    assert len(lines) == 1 and f"@iconify-json/ph@{script.PINNED['ph']}" in lines[0]
    assert "@iconify-json/tabler@1.0.0" in lines[0] and f"--prefix {cache}" in lines[0]
    with pytest.raises(ValueError, match="no pinned version"):
        script.install(cache, ["unknown-set"])
