"""Typographic attacks: the word drawn in its box, the seeded choices, the metrics, the errors, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipforge
from clipforge.checkpoints.native import save_pretrained
from clipforge.cli.main import main
from clipforge.eval import EvalModel, Sample, build_classifier
from clipforge.eval.typographic import (
    TypographicAttack,
    choose_word,
    evaluate_typographic,
    image_rng,
    label_box,
    label_set,
    open_synthetic,
    plot_examples,
    write_word,
)
from helpers.fakes import COLOURS, RGB, fake_model, solid

PRESET = "tiny-vit"
SMALL = {"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
         "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}  # tiny-vit shrunk: a fast test
TEMPLATES = ["a photo of a {}."]


def noise(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def solid_samples(per_class: int = 3) -> list[Sample]:
    return [Sample(solid(c, 32), label=i, source=f"{c}{k}") for k in range(per_class) for i, c in enumerate(COLOURS)]


# --- drawing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("font", ["unifont", "pil"])
@pytest.mark.parametrize("position", ["center", "top", "bottom", "random"])
def test_only_the_box_changes_and_it_holds_the_box_and_text_colours(font: str, position: str) -> None:
    image = noise()
    attack = TypographicAttack(word="iPod", position=position, size=0.3, font=font, text_colour=(10, 200, 30))
    out = np.asarray(write_word(image, "iPod", attack, image_rng(0, 0))).astype(int)
    (x0, y0, x1, y1), mask = label_box(image.size, "iPod", attack, image_rng(0, 0))
    assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 40 and y1 - y0 == pytest.approx(12, abs=1)
    changed = (out != np.asarray(image)).any(axis=2)
    outside = changed.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any(), "a pixel outside the label's box changed"
    box = out[y0:y1, x0:x1].reshape(-1, 3)
    white = (box == 255).all(axis=1)
    letters = np.abs(box - (10, 200, 30)).max(axis=1) < (1 if font == "unifont" else 100)  # PIL's are blended
    assert white.mean() > 0.3 and letters.sum() >= 10  # a paper label with the word on it
    assert mask.max() > 200 and mask.shape[0] <= y1 - y0


def test_without_a_box_only_letter_pixels_change() -> None:
    image = noise(1)
    attack = TypographicAttack(word="star", box_colour=None, size=0.5)
    out = np.asarray(write_word(image, "star", attack))
    (x0, y0, x1, y1), _ = label_box(image.size, "star", attack)
    changed = (out != np.asarray(image)).any(axis=2)
    assert 0 < changed.sum() < 0.6 * (x1 - x0) * (y1 - y0)
    assert changed[y0:y1, x0:x1].sum() == changed.sum()
    assert (out[changed] == 0).all()  # black letters, nearest-neighbour Unifont: no blended pixels


def test_a_long_word_is_drawn_smaller_to_fit_across() -> None:
    attack = TypographicAttack(size=0.5)
    (x0, _, x1, _), _ = label_box((40, 40), "a very long label word", attack)
    (_, sy0, _, sy1), _ = label_box((40, 40), "ab", attack)
    assert 0 <= x0 and x1 <= 40 and sy1 - sy0 == 20


def test_random_positions_are_deterministic_given_the_seed() -> None:
    attack = TypographicAttack(position="random", size=0.2)
    boxes = [label_box((64, 64), "ring", attack, image_rng(7, i))[0] for i in range(6)]
    assert boxes == [label_box((64, 64), "ring", attack, image_rng(7, i))[0] for i in range(6)]
    assert len(set(boxes)) > 3
    assert boxes != [label_box((64, 64), "ring", attack, image_rng(8, i))[0] for i in range(6)]
    with pytest.raises(ValueError, match="position"):
        label_box((64, 64), "ring", attack)


# --- which word ---------------------------------------------------------------------------------------------------


def test_word_modes() -> None:
    names = ["circle", "square", "star", "ring"]
    assert label_set(names, "other") == (names, None) and label_set(names, "own") == (names, None)
    assert label_set(names, "STAR") == (names, 2)  # a class, whatever the case
    assert label_set(names, "iPod") == ([*names, "iPod"], 4)  # an extra class
    assert choose_word(1, names, "own", None, image_rng(0, 0)) == ("square", 1)
    assert choose_word(3, names, "iPod", 4, image_rng(0, 0)) == ("iPod", 4)
    drawn = [choose_word(1, names, "other", None, image_rng(0, i)) for i in range(300)]
    assert {w for w, _ in drawn} == {"circle", "star", "ring"} and all(names[j] == w for w, j in drawn)
    counts = np.bincount([j for _, j in drawn], minlength=4)
    assert counts[1] == 0 and counts.min(initial=300, where=counts > 0) > 70  # uniform over the other three
    assert drawn == [choose_word(1, names, "other", None, image_rng(0, i)) for i in range(300)]


# --- metrics ------------------------------------------------------------------------------------------------------


def test_known_answers_on_the_colour_model(tmp_path: Path) -> None:
    # The fake model sees mean RGB and cannot read: letters in the image's own colour leave it unchanged.
    model = fake_model()
    kw = {"cache_dir": tmp_path, "batch_size": 2}
    for colour in COLOURS:
        samples = [Sample(solid(colour, 32), label=COLOURS.index(colour))]
        attack = TypographicAttack(word="other", box_colour=None, text_colour=RGB[colour])
        r = evaluate_typographic(model, samples, list(COLOURS), TEMPLATES, attack, **kw)
        assert r.metrics["clean_acc1"] == r.metrics["attacked_acc1"] == 1.0
        assert r.metrics["attack_success"] == 0.0 and r.extra_class is None
    # A green word on a green box covering most of a red image: seen as green.
    red = [Sample(Image.new("RGB", (48, 16), RGB["red"]), label=0)] * 4
    big = TypographicAttack(word="Green", size=1.0, box_colour="green", text_colour="green")
    r = evaluate_typographic(model, red, list(COLOURS), TEMPLATES, big, **kw)
    (x0, y0, x1, y1), _ = label_box((48, 16), "Green", big)
    assert (x1 - x0) * (y1 - y0) > 0.9 * 48 * 16  # so the image's mean colour is green
    assert r.classes == list(COLOURS) and r.extra_class is None
    assert r.metrics == {"clean_acc1": 1.0, "clean_acc5": None, "clean_mean_per_class_recall": 1.0,
                         "attacked_acc1": 0.0, "attacked_acc5": None, "attacked_mean_per_class_recall": 0.0,
                         "attack_success": 1.0, "clean_as_word": 0.0, "acc1_drop": 1.0}
    assert r.attacked_confusion[0].tolist() == [0, 4, 0]
    # A word that is not a class is scored as a fourth one, on clean and attacked images alike.
    r = evaluate_typographic(model, solid_samples(1), list(COLOURS), TEMPLATES,
                             TypographicAttack(word="iPod"), **kw)
    assert r.classes == [*COLOURS, "iPod"] and r.extra_class == "iPod" and r.clean_confusion.shape == (4, 4)
    assert r.metrics["clean_acc1"] == 1.0 and r.metrics["clean_as_word"] == 0.0


@pytest.fixture(scope="module")
def tiny() -> EvalModel:
    torch.manual_seed(0)
    model, _, transform = clipforge.create_model_and_transforms(PRESET, **SMALL)
    return EvalModel(model, transform, clipforge.get_text_processor(model))


@pytest.fixture(scope="module")
def tiny_dir(tiny: EvalModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pretrained(tiny.model, tmp_path_factory.mktemp("model") / "tiny")


def test_metrics_match_a_hand_computation(tiny: EvalModel, tmp_path: Path) -> None:
    samples = [Sample(noise(i, (40, 40)), label=i % 3, source=str(i)) for i in range(7)]
    attack = TypographicAttack(word="other", position="random", size=0.4, seed=3)
    r = evaluate_typographic(tiny, samples, list(COLOURS), TEMPLATES, attack, batch_size=3, cache_dir=tmp_path,
                             n_examples=2)
    weights = build_classifier(tiny, list(COLOURS), TEMPLATES, use_cache=False)
    clean_hits = attacked_hits = fooled = 0
    for i, s in enumerate(samples):
        rng = image_rng(3, i)
        word, j = choose_word(s.label, list(COLOURS), "other", None, rng)
        attacked = write_word(s.image, word, attack, rng)
        clean_pred = int((tiny.encode_images(tiny.transform(s.image)[None]) @ weights).argmax())
        attacked_pred = int((tiny.encode_images(tiny.transform(attacked)[None]) @ weights).argmax())
        clean_hits += clean_pred == s.label
        attacked_hits += attacked_pred == s.label
        fooled += attacked_pred == j
        if i < 2:
            assert (r.examples[i].clean_pred, r.examples[i].attacked_pred, r.examples[i].word) == \
                (clean_pred, attacked_pred, j)
    assert r.n_samples == 7 and len(r.examples) == 2
    assert r.metrics["clean_acc1"] == pytest.approx(clean_hits / 7)
    assert r.metrics["attacked_acc1"] == pytest.approx(attacked_hits / 7)
    assert r.metrics["attack_success"] == pytest.approx(fooled / 7)
    again = evaluate_typographic(tiny, samples, list(COLOURS), TEMPLATES, attack, batch_size=5, cache_dir=tmp_path)
    assert again.metrics == r.metrics  # the seeded draws do not depend on the batch size
    png = plot_examples(r.examples, r.classes, tmp_path / "ex.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"size": 0.0}, "size"), ({"size": 1.5}, "size"), ({"position": "left"}, "position"), ({"word": " "}, "word"),
    ({"font": "/no/such/font.ttf"}, "font"), ({"text_colour": "blurple"}, "text_colour"),
    ({"box_colour": (1, 2)}, "box_colour"), ({"seed": -1}, "seed"),
])
def test_bad_options_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        TypographicAttack(**kwargs)


def test_bad_data_errors(tmp_path: Path) -> None:
    model = fake_model()
    with pytest.raises(ValueError, match="no images could be read"):
        evaluate_typographic(model, [], list(COLOURS), TEMPLATES, TypographicAttack(), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="'other' needs at least two classes"):
        evaluate_typographic(model, solid_samples(1)[:1], ["red"], TEMPLATES, TypographicAttack(), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="outside the 3 class names"):
        evaluate_typographic(model, [Sample(solid("red"), label=5, source="x")], list(COLOURS), TEMPLATES,
                             TypographicAttack(word="own"), cache_dir=tmp_path)


# --- the synthetic world and the CLI ------------------------------------------------------------------------------


def test_synthetic_task_data() -> None:
    data = open_synthetic("synthetic:shape", 32, size=6)
    samples = list(data)
    assert len(samples) == 6 and data.classes and data.templates
    assert all(s.image.size == (32, 32) and 0 <= s.label < len(data.classes) for s in samples)
    with pytest.raises(ValueError, match="--data: synthetic task must be one of .*shape"):
        open_synthetic("synthetic:nope", 32, size=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("colours")
    for c in COLOURS:
        (root / c).mkdir()
        for i in range(2):
            solid(c, 24 + 8 * i).save(root / c / f"{i}.png")
    return root


def cli(tmp_path: Path, model: Path, *argv: str) -> int:
    (tmp_path / "t.txt").write_text("a photo of a {}.\n")
    return main(["eval", "typographic", "--model", str(model), "--device", "cpu", "--no-progress", "--cache-dir",
                 str(tmp_path / "cache"), "--templates", str(tmp_path / "t.txt"), *argv])


def test_cli_end_to_end(folder: Path, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "typo.json"
    assert cli(tmp_path, tiny_dir, "--data", str(folder), "--word", "iPod", "--position", "bottom", "--font", "pil",
               "--batch-size", "4", "--output", str(out), "--examples", "3") == 0
    assert "extra class" in capsys.readouterr().err
    r = json.loads(out.read_text())
    assert r["task"] == "zeroshot_classification" and r["pretrained"] == str(tiny_dir)
    assert r["data"]["n_samples"] == 6 and r["classes"] == [*sorted(COLOURS), "iPod"] and r["extra_class"] == "iPod"
    assert r["attack"] == {"kind": "typographic", "word": "iPod", "position": "bottom", "size": 0.25,
                           "text_colour": [0, 0, 0], "box_colour": [255, 255, 255], "font": "pil", "seed": 0}
    assert {"clean_acc1", "attacked_acc1", "attack_success", "clean_as_word"} <= set(r["metrics"])
    assert all(0 <= r["metrics"][k] <= 1 for k in ("clean_acc1", "attacked_acc1", "attack_success"))
    assert Path(r["examples"]) == tmp_path / "typo_examples.png" and Path(r["examples"]).stat().st_size > 1000


def test_cli_on_the_synthetic_world(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    assert cli(tmp_path, tiny_dir, "--data", "synthetic:colour", "--synthetic-size", "4", "--word", "own", "--output",
               str(out), "--examples", "0") == 0
    r = json.loads(out.read_text())
    assert r["data"]["n_samples"] == 4 and "examples" not in r and not (tmp_path / "s_examples.png").exists()
    assert r["metrics"]["attack_success"] == r["metrics"]["attacked_acc1"]  # own: the word is the true class


@pytest.mark.parametrize(("argv", "message"), [
    (["--font", "/no/such/font.ttf"], "--font: '/no/such/font.ttf' is neither"),
    (["--box-colour", "blurple"], "--box-colour: unknown colour"),
    (["--data", "synthetic:nope"], "--data: synthetic task must be one of"),
    (["--word", " "], "--word: expected other, own or a word to write"),
    (["--text-colour", "none"], "--text-colour: the letters need a colour"),
])
def test_cli_errors_name_the_flag(folder: Path, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  argv: list[str], message: str) -> None:
    assert cli(tmp_path, tiny_dir, "--data", str(folder), *argv) == 2
    assert f"clipforge eval: error: {message}" in capsys.readouterr().err


def test_cli_size_and_empty_data(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli(tmp_path, tiny_dir, "--data", str(tmp_path), "--size", "1.5")
    assert "--size: expected a number in (0, 1]" in capsys.readouterr().err
    (tmp_path / "empty" / "red").mkdir(parents=True)
    assert cli(tmp_path, tiny_dir, "--data", str(tmp_path / "empty")) == 2
    assert f"clipforge eval: error: {tmp_path / 'empty'}: no images found" in capsys.readouterr().err
