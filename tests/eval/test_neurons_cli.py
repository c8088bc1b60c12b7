"""``clipforge neurons`` end to end on a tiny random model: a class folder, a plain folder, the synthetic world, and
its one-line errors (a bad layer lists the valid ones, an empty vocabulary, a unit out of range)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipforge.api import create_model, get_text_processor
from clipforge.checkpoints.native import save_pretrained
from clipforge.cli.main import main
from clipforge.eval.prompts import load_classnames

pytestmark = pytest.mark.usefixtures("one_thread")  # an oversubscribed OpenMP pool is several times slower

RN = {"embed_dim": 16, "vision": {"image_size": 32, "width": 8, "heads": 2},
      "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}
COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 210)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny-rn", **RN)
    return save_pretrained(model, tmp_path_factory.mktemp("model") / "tiny-rn", get_text_processor(model))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classes")
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(5):
            image = Image.new("RGB", (40, 40), (250, 250, 250))
            image.paste(colour, (3 * i, 2 * i, 3 * i + 20, 2 * i + 24))
            image.save(root / name / f"{i}.png")
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["neurons", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_class_folder_end_to_end(model_dir: Path, folder: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "words.txt").write_text("apple\nipod\n", encoding="utf-8")
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "--model", str(model_dir), "--data", str(folder), "--layer", "visual.layer4",
                            "--top-units", "3", "--vocab", "synthetic", "--vocab", str(tmp_path / "words.txt"),
                            "--output", str(out), "--top-k", "4", "--featvis-steps", "2", "--no-progress",
                            "--device", "cpu")
    assert code == 0, err
    data = json.loads((out / "neurons.json").read_text())
    assert data["layer"] == "visual.layer4" and data["images"] == 15 and data["kind"] == "channel"
    units = [u["unit"] for u in data["units"]]
    assert len(units) == 3 and units == [s["unit"] for s in data["ranking"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.html", "neurons.json",
                                                             *(f"unit-{u}.png" for u in units)])
    first = data["units"][0]
    values = [t["value"] for t in first["top_images"]]
    assert len(values) == 4 and values == sorted(values, reverse=True)
    assert {t["class"] for t in first["top_images"]} <= set(COLOURS)
    assert data["vocabulary"] == 26 + 2 + 0  # synthetic words (red, green, blue among them) and the file's
    assert first["featvis"] is not None and len(first["top_words"]) == 8
    lines = stdout.splitlines()
    assert lines[1].startswith("unit\tscore") and lines[2].split("\t")[0] == str(units[0])
    html = (out / "index.html").read_text()
    assert all(f'id="unit-{u}"' in html for u in units) and "src=\"data:image/png;base64," in html


def test_a_plain_folder_and_the_synthetic_world(model_dir: Path, folder: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--model", str(model_dir), "--data", str(folder / "red"), "--layer", "embedding",
                       "--units", "0,5", "--vocab", "cifar10", "--output", str(tmp_path / "plain"),
                       "--featvis-steps", "0", "--no-progress", "--device", "cpu")
    assert code == 0, err
    data = json.loads((tmp_path / "plain" / "neurons.json").read_text())
    assert [u["unit"] for u in data["units"]] == [0, 5] and data["images"] == 5
    assert all(len(u["top_texts"]) == 8 for u in data["units"])  # embedding axes: the text tower's top texts
    classes = {t["class"] for u in data["units"] for t in u["top_images"]}
    assert classes <= set(load_classnames("cifar10"))  # no classes: the zero-shot reading over the vocabulary
    code, _, err = run(capsys, "--model", str(model_dir), "--data", str(folder), "--layer", "embedding.text",
                       "--units", "0,11", "--vocab", "synthetic", "--output", str(tmp_path / "text"),
                       "--featvis-steps", "0", "--no-progress", "--device", "cpu")
    assert code == 0, err
    data = json.loads((tmp_path / "text" / "neurons.json").read_text())
    assert [(u["unit"], u["name"]) for u in data["units"]] == [(0, "circle"), (11, "green")]  # one per word
    assert data["vocabulary"] == 26  # the folder's classes (red, green, blue) are synthetic words already
    code, _, err = run(capsys, "--model", str(model_dir), "--data", "synthetic:val:20", "--layer", "visual.layer2.0",
                       "--units", "1", "--output", str(tmp_path / "world"), "--featvis-steps", "0", "--no-progress",
                       "--device", "cpu")
    assert code == 0, err
    data = json.loads((tmp_path / "world" / "neurons.json").read_text())
    assert data["units"][0]["top_images"][0]["source"].startswith("synthetic:val:")
    assert data["units"][0]["top_images"][0]["class"] in {"circle", "square", "triangle", "star", "hexagon",
                                                           "cross", "diamond", "ring"}


def test_errors_are_one_line(model_dir: Path, folder: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model", str(model_dir), "--data", str(folder), "--output", str(tmp_path / "x"), "--device", "cpu"]
    code, _, err = run(capsys, *base, "--layer", "visual.blocks.0")
    assert code == 2
    assert err.strip() == ("clipforge neurons: error: unknown layer 'visual.blocks.0'; valid layers: visual.layer1, "
                           "visual.layer1.0, visual.layer2, visual.layer2.0, visual.layer3, visual.layer3.0, "
                           "visual.layer4, visual.layer4.0, embedding, embedding.text")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    code, _, err = run(capsys, *base, "--layer", "embedding", "--vocab", str(tmp_path / "empty.txt"))
    assert code == 2 and "no words in the file" in err and err.count("\n") == 1
    code, _, err = run(capsys, *base, "--layer", "embedding", "--vocab", ",")
    assert code == 2 and "empty vocabulary" in err
    code, _, err = run(capsys, *base, "--layer", "embedding", "--units", "16")
    assert code == 2 and "unit 16 out of range: layer 'embedding' has units 0..15" in err
    code, _, err = run(capsys, "--model", str(model_dir), "--layer", "embedding")
    assert code == 2 and "--data, --output required" in err
    with pytest.raises(SystemExit) as exit_:
        run(capsys, *base, "--layer", "embedding", "--units", "1", "--top-units", "2")
    assert exit_.value.code == 2 and "--top-units: not allowed with argument --units" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    code, out, _ = run(capsys, "--model", str(model_dir), "--list-layers")
    assert code == 0 and out.splitlines()[-2:] == ["embedding\tembedding\t16 units",
                                                   "embedding.text\ttext-direction\tone unit per vocabulary word"]
