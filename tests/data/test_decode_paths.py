"""One decoder on every path: training (tables, folders), evaluation (class folders, tables, the eval CLI) and
``clipforge classify`` turn the same transparent file into the same tensor, and refuse the same absurd sizes.

The rule (``clipforge.data.decode``): transparency is composited on white; ``alpha="drop"`` (``--alpha drop``,
``data.decode.alpha=drop``) is PIL's ``convert("RGB")``, OpenAI's. Each image's transparent pixels hold a colour
(red, or a palette entry) that dropping the alpha channel reveals, so the two rules give different tensors.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.cli import classify as classify_cli
from clipforge.cli import eval as eval_cli
from clipforge.cli.main import main
from clipforge.data.decode import DecodeLimits
from clipforge.eval import EvalModel
from clipforge.eval.datasets import CsvDataset, ImageFolder
from clipforge.train import Runtime, load_config
from clipforge.train.data import TrainData
from clipforge.transforms import EvalTransform
from helpers.fakes import FakeCLIP, fake_processor
from helpers.images import png_bomb

TRANSFORM = EvalTransform(32, (0.5,) * 3, (0.25,) * 3)
NAMES = ("rgba", "palette", "la")


def transparent_images() -> dict[str, Image.Image]:
    """An RGBA, a P (transparency index) and an LA image, 40 × 48, part opaque, part see-through."""
    rng = np.random.default_rng(0)
    rgba = np.zeros((48, 40, 4), np.uint8)
    rgba[..., 0] = 255  # red under the transparent part
    rgba[:, :20, :3] = rng.integers(0, 256, (48, 20, 3))
    rgba[:, :20, 3] = 255
    rgba[:, 20:30, 3] = 128  # half transparent
    palette = Image.fromarray(rng.integers(0, 4, (48, 40), dtype=np.uint8), "P")
    palette.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30, 30, 30, 200])
    palette.info["transparency"] = 1  # the red entry is see-through
    la = np.stack([rng.integers(0, 256, (48, 40)), np.tile(np.linspace(0, 255, 40), (48, 1))], -1).astype(np.uint8)
    return {"rgba": Image.fromarray(rgba, "RGBA"), "palette": palette, "la": Image.fromarray(la, "LA")}


def on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """``root/<name>/<name>.png`` (a class folder per image), sidecar captions, and tables of paths."""
    root = tmp_path_factory.mktemp("transparent")
    for name, image in transparent_images().items():
        (root / name).mkdir()
        image.save(root / name / f"{name}.png")
        assert Image.open(root / name / f"{name}.png").mode == image.mode  # the mode survives the file
        (root / name / f"{name}.txt").write_text(f"caption {name}")
    with (root / "pairs.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["filepath", "caption", "label"],
                                 *([f"{n}/{n}.png", f"caption {n}", n] for n in NAMES)])
    return root


def expected(files: Path, alpha: str) -> dict[str, torch.Tensor]:
    convert = on_white if alpha == "white" else (lambda image: image.convert("RGB"))
    return {n: TRANSFORM(convert(Image.open(files / n / f"{n}.png"))) for n in NAMES}


def training(files: Path, kind: str, alpha: str) -> dict[str, torch.Tensor]:
    """Batch 0 of TrainData (eval transform, no crops) over the three images, by caption."""
    path = files / "pairs.csv" if kind == "csv" else files
    config = load_config(None, {"data.kind": kind, "data.path": str(path), "data.augment": False,
                                "data.decode.alpha": alpha, "batch_size": 3})
    captions: list[str] = []
    data = TrainData(config.data, TRANSFORM, lambda t: (captions.extend(t), torch.zeros(len(t), 1))[1], 3, 0,
                     Runtime(), image_size=32)
    images, _, info = data.batches[0]
    assert info["skipped"] == {} and sorted(captions) == [f"caption {n}" for n in sorted(NAMES)]
    return {c.split()[-1]: image for c, image in zip(captions, images)}


def evaluation(files: Path, alpha: str) -> list[dict[str, torch.Tensor]]:
    """The same images through the eval datasets: the class folder, a label table and a caption table."""
    limits = DecodeLimits(alpha=alpha)
    folder = ImageFolder(files, limits)
    labels = CsvDataset(files / "pairs.csv", label_col="label", limits=limits)
    captions = CsvDataset(files / "pairs.csv", caption_col="caption", limits=limits)
    by_label = [{ds.classes[s.label]: TRANSFORM(s.image) for s in ds} for ds in (folder, labels)]
    return [*by_label, {s.captions[0].split()[-1]: TRANSFORM(s.image) for s in captions}]


class Recorder(EvalTransform):
    """The eval transform, remembering what it returned."""

    def __init__(self) -> None:
        super().__init__(32, (0.5,) * 3, (0.25,) * 3)
        self.outputs: list[torch.Tensor] = []

    def __call__(self, image: Image.Image) -> torch.Tensor:
        self.outputs.append(super().__call__(image))
        return self.outputs[-1]


@pytest.fixture
def fake_model(monkeypatch):
    """The fake model (helpers.fakes) for ``classify`` and ``eval``, with a recording transform."""
    model = EvalModel(FakeCLIP(), Recorder(), fake_processor)
    for module in (classify_cli, eval_cli):
        monkeypatch.setattr(module, "load_eval_model", lambda *_: (model, "fake", "random"))
    return model


def classify(files: Path, alpha: str, model: EvalModel, capsys) -> dict[str, torch.Tensor]:
    model.transform.outputs.clear()
    paths = [str(files / n / f"{n}.png") for n in NAMES]
    assert main(["classify", *paths, "--labels", "red,green,blue", "--model", "fake", "--alpha", alpha]) == 0
    assert "skipped" not in capsys.readouterr().out
    return dict(zip(NAMES, model.transform.outputs, strict=True))


@pytest.mark.parametrize("alpha", ["white", "drop"])
def test_every_path_gives_the_same_tensor(files, alpha, fake_model, capsys):
    want = expected(files, alpha)
    other = expected(files, "drop" if alpha == "white" else "white")
    assert all(not torch.equal(want[n], other[n]) for n in NAMES)  # the rules differ on each of the images
    paths = {"train csv": training(files, "csv", alpha), "train folder": training(files, "folder", alpha),
             "classify": classify(files, alpha, fake_model, capsys)}
    paths.update(zip(("eval folder", "eval label table", "eval caption table"), evaluation(files, alpha)))
    for path, got in paths.items():
        assert set(got) == set(NAMES), path
        for n in NAMES:
            assert torch.equal(got[n], want[n]), f"{path}: {n}"


def test_eval_cli_alpha_flag_reaches_the_decoder(files, fake_model, tmp_path):
    """``clipforge eval zeroshot --alpha drop`` decodes as OpenAI does; the default composites on white."""
    for alpha in ("white", "drop"):
        fake_model.transform.outputs.clear()
        argv = ["eval", "zeroshot", "--model", "fake", "--data", str(files), "--no-progress",
                "--no-classifier-cache", "--cache-dir", str(tmp_path), "--templates", str(tmp_path / "t.txt")]
        (tmp_path / "t.txt").write_text("a photo of a {}.\n")
        assert main(argv + (["--alpha", alpha] if alpha == "drop" else [])) == 0
        want = expected(files, alpha)
        assert all(torch.equal(x, want[n]) for x, n in zip(fake_model.transform.outputs, sorted(NAMES), strict=True))


def _absurd(root: Path) -> dict[str, str]:
    """A real 1 × 100,000 PNG (a side below ``min_side``) and a PNG header claiming 100,000² pixels."""
    (root / "odd").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (100_000, 1), (200, 0, 0)).save(root / "odd" / "line.png")
    (root / "odd" / "bomb.png").write_bytes(png_bomb(100_000, 100_000))
    return {"line.png": "bad_size", "bomb.png": "too_large"}


def test_absurd_sizes_are_skipped_in_eval_and_an_error_in_classify(tmp_path, fake_model, capsys):
    reasons = _absurd(tmp_path)
    Image.new("RGB", (16, 16), (0, 200, 0)).save(tmp_path / "odd" / "fine.png")
    dataset = ImageFolder(tmp_path)
    assert [Path(s.source).name for s in dataset] == ["fine.png"]
    assert {Path(s).name: r.split(":")[0] for s, r in dataset.skipped} == reasons
    assert dataset.skip_counts() == {"bad_size": 1, "too_large": 1}
    assert "bad_size: 100000x1 has a side below 8" in dict(dataset.skipped)[str(tmp_path / "odd" / "line.png")]
    for name, reason in reasons.items():
        capsys.readouterr()
        assert main(["classify", str(tmp_path / "odd" / name), "--labels", "a,b", "--model", "fake"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"clipforge classify: error: cannot read {tmp_path / 'odd' / name}: {reason}: ")
        assert len(err.splitlines()) == 1
    (tmp_path / "odd" / "fine.png").unlink()
    assert main(["classify", str(tmp_path / "odd"), "--labels", "a,b", "--model", "fake"]) == 2
    assert "none of the 2 images could be read (too_large: 1, bad_size: 1)" in capsys.readouterr().err
