"""Effective robustness: logit axes and the fit, class-subset masks, the shipped ImageNet lists, and the CLI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.cli import eval_robustness
from clipforge.cli.args import OneLineParser, verb_parser
from clipforge.eval.datasets import ImageFolder
from clipforge.eval.robustness import (
    IMAGENET_SHIFTS,
    LinearFit,
    Point,
    ShiftScore,
    baseline_fits,
    class_mapping,
    fit_line,
    fit_trends,
    identity_mapping,
    imagenet_data,
    imagenet_subset,
    inv_logit,
    logit,
    masked_top1,
    measure_model,
    robustness_table,
)
from helpers.fakes import COLOURS, fake_model, solid


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# --- Logit axes, the line and effective robustness. ---


def test_logit_axes_round_trip_and_clip() -> None:
    assert logit(0.5) == 0.0
    assert float(logit(sig(1.3))) == pytest.approx(1.3)
    assert float(inv_logit(logit(0.9))) == pytest.approx(0.9)
    assert np.isfinite(logit(np.array([0.0, 1.0]))).all()  # clipped, not ±inf


def test_fit_matches_a_hand_computation() -> None:
    # Logit x = 0, 1, 2 and y = -1, 0.5, 1: slope = Σ(x - x̄)(y - ȳ) / Σ(x - x̄)² = 2 / 2 = 1, intercept = 1/6 - 1.
    fit = fit_line([sig(0), sig(1), sig(2)], [sig(-1), sig(0.5), sig(1)], "hand")
    assert fit.slope == pytest.approx(1.0)
    assert fit.intercept == pytest.approx(1 / 6 - 1)
    assert fit.n_points == 3 and fit.source == "hand"
    assert fit.predict(sig(1.5)) == pytest.approx(sig(1.5 - 5 / 6))


def test_effective_robustness_of_a_planted_model() -> None:
    # Standard models lie exactly on logit(ood) = 0.8 logit(id) - 1; the planted one sits 0.5 above on logit axes.
    ids = [0.3, 0.5, 0.7, 0.9]
    standard = [Point(f"m{i}", f"m{i}", "x", "linear_probe", a, 100,
                      {"shift": ShiftScore(sig(0.8 * float(logit(a)) - 1), a, 100, 100)}) for i, a in enumerate(ids)]
    planted_ood = sig(0.8 * float(logit(0.8)) - 1 + 0.5)
    planted = Point("clip", "clip", "x", "zeroshot", 0.8, 100, {"shift": ShiftScore(planted_ood, 0.8, 100, 100)})
    fits = fit_trends([*standard, planted], lambda p: p.head == "linear_probe", "standard")
    assert fits["shift"].slope == pytest.approx(0.8) and fits["shift"].intercept == pytest.approx(-1.0)
    table = robustness_table([*standard, planted], fits)
    assert table["clip"]["shift"]["logit_distance"] == pytest.approx(0.5)
    expected = sig(0.8 * float(logit(0.8)) - 1)
    assert table["clip"]["shift"]["effective_robustness"] == pytest.approx(planted_ood - expected)
    assert table["clip"]["shift"]["effective_robustness"] > 0.05
    for p in standard:
        assert table[p.label]["shift"]["effective_robustness"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least two points"):
        fit_trends([*standard, planted], lambda p: p.head == "zeroshot")


def test_fit_needs_two_distinct_points() -> None:
    with pytest.raises(ValueError, match="at least two points"):
        fit_line([0.5], [0.4])
    with pytest.raises(ValueError, match="different in-distribution"):
        fit_line([0.5, 0.5], [0.4, 0.3])


# --- Class-subset masks and class mappings. ---


def test_a_class_outside_the_subset_is_never_predicted() -> None:
    mapping = class_mapping("half", ["b", "d"], ["a", "b", "c", "d"])
    assert mapping.subset == (1, 3)
    logits = torch.tensor([[9.0, 1.0, 8.0, 0.0],  # a and c lead, but only b or d may be predicted: b
                           [0.0, 1.0, 9.0, 2.0],  # d
                           [5.0, 3.0, 0.0, 4.0]])  # d
    labels = torch.tensor([0, 1, 0])  # shifted labels index ["b", "d"]
    assert masked_top1(logits, labels, mapping) == (2, 3)
    assert masked_top1(logits, torch.tensor([0, 1, 1]), mapping) == (3, 3)
    # Unmasked, the argmax of row 0 would be class a: no mask, no credit.
    full = class_mapping("all", ["a", "b", "c", "d"], ["a", "b", "c", "d"])
    assert masked_top1(logits, torch.tensor([1, 3, 1]), full) == (0, 3)
    # The ID set on a subset: only samples of the subset's classes are scored.
    assert masked_top1(logits, torch.tensor([1, 0, 3]), identity_mapping("id", 4, [1, 3])) == (2, 2)


def test_class_mapping_by_name_and_its_errors() -> None:
    m = class_mapping("sketchy", ["Golden_retriever", "tabby cat"], ["tabby_cat", "golden retriever", "ox"])
    assert m.targets == ((1,), (0,))
    with pytest.raises(ValueError, match=r"--shift sketchy: class\(es\) zebra are not among .*tabby_cat"):
        class_mapping("sketchy", ["tabby cat", "zebra"], ["tabby_cat", "golden retriever"])
    with pytest.raises(ValueError, match="not ImageNet's"):
        class_mapping("imagenet-r", ["n01443537"], ["cat", "dog"])


def test_imagenet_mappings() -> None:
    wnids = imagenet_data()["wnids"]
    v2 = class_mapping("imagenet-v2", ["0", "10", "999"], wnids)
    assert v2.targets == ((0,), (10,), (999,))
    with pytest.raises(ValueError, match="class indices 0..999"):
        class_mapping("imagenet-v2", ["1000"], wnids)
    r = class_mapping("imagenet-r", sorted(imagenet_data()["imagenet-r"]), wnids)
    assert list(r.subset) == imagenet_subset("imagenet-r")
    with pytest.raises(ValueError, match="not one of imagenet-r's 200 classes"):
        class_mapping("imagenet-r", ["n01440764"], wnids)  # tench is not an ImageNet-R class
    on = class_mapping("objectnet", ["alarm_clock", "banana", "squeegee"], wnids)  # no ImageNet squeegee
    assert len(on.targets[0]) == 2 and on.targets[2] == ()  # analog + digital clock; squeegee unscored
    assert masked_top1(torch.zeros(2, 1000).index_fill_(1, torch.tensor([on.targets[0][1]]), 1.0),
                       torch.tensor([0, 2]), on) == (1, 1)
    # By the 1,000 ImageNet class names (a CLIP_benchmark webdataset) instead of WordNet-id folders.
    from clipforge.eval.prompts import load_classnames

    assert class_mapping("imagenet-a", imagenet_data()["imagenet-a"], load_classnames("imagenet")).subset == \
        tuple(imagenet_subset("imagenet-a"))


def test_shipped_subsets() -> None:
    data = imagenet_data()
    assert len(data["wnids"]) == 1000 and data["wnids"] == sorted(set(data["wnids"]))
    for name, size in (("imagenet-r", 200), ("imagenet-a", 200), ("objectnet", 125)):
        sub = imagenet_subset(name)
        assert len(sub) == size == len(set(sub)) and all(0 <= i < 1000 for i in sub)
    assert len(data["objectnet"]) == 113
    assert imagenet_subset("imagenet-r")[0] == 1  # goldfish, n01443537 (ImageNet-R has no tench)
    assert imagenet_subset("imagenet-a")[:3] == [6, 11, 13]  # stingray, goldfinch, junco
    assert len(imagenet_subset("imagenet-v2")) == 1000
    fits = baseline_fits()
    assert set(fits) == set(IMAGENET_SHIFTS)
    assert 0.55 < fits["imagenet-v2"].predict(0.76) < 0.70  # a ResNet-50's 76% → mid-60s on V2, as published


# --- Measuring a model: a known answer with the fake colour model. ---


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    for c in COLOURS:
        for split in ("id", "train"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                solid(c, 8 + i).save(root / split / c / f"{i}.png")
    # A shifted set of red and green only, tinted so blue leads every image: right only under the class mask.
    for c, rgb in (("red", (160, 0, 255)), ("green", (0, 160, 255))):
        (root / "tinted" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), rgb).save(root / "tinted" / c / f"{i}.png")
    (root / "odd" / "purple").mkdir(parents=True)
    solid("red").save(root / "odd" / "purple" / "0.png")
    (root / "templates.txt").write_text("a photo of a {}.\n")
    return root


def test_measure_model_known_answer(folders, tmp_path) -> None:
    id_ds = ImageFolder(folders / "id")
    tinted = ImageFolder(folders / "tinted")
    mapping = class_mapping("tinted", tinted.classes, id_ds.classes)
    points = measure_model(fake_model(), "fake", "none", id_ds, {"tinted": (tinted, mapping)}, list(id_ds.classes),
                           ["a photo of a {}."], ImageFolder(folders / "train"), k_shots=(1,), use_cache=False)
    assert [p.label for p in points] == ["fake/zeroshot", "fake/probe", "fake/probe-k1"]
    zs = points[0]
    assert zs.id_acc == 1.0 and zs.n_id == 12
    assert zs.shifts["tinted"] == ShiftScore(1.0, 1.0, 6, 8)  # blue leads, but blue is outside the subset
    assert points[1].extra["C"] > 0 and points[1].extra["n_train"] == 12


# --- The CLI, end to end on a tiny random model. ---


def cli(argv: list[str]) -> int:
    parser = OneLineParser(prog="clipforge")
    sub = parser.add_subparsers(dest="verb")
    tasks = verb_parser(sub, "eval").add_subparsers(dest="task")
    eval_robustness.register(tasks)
    args = parser.parse_args(argv)
    return args.func(args)


def base(folders, tmp_path, *extra: str) -> list[str]:
    return ["eval", "robustness", "--model", "tiny-vit", "--id", str(folders / "id"), "--templates",
            str(folders / "templates.txt"), "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
            "--no-progress", "--device", "cpu", "--batch-size", "8", *extra]


def test_cli_end_to_end(folders, tmp_path, capsys) -> None:
    line = tmp_path / "line.json"
    line.write_text(json.dumps({"tinted": {"slope": 1.0, "intercept": -0.5}, "id2": {"slope": 1, "intercept": 0}}))
    argv = base(folders, tmp_path, "--shift", f"tinted={folders / 'tinted'}", "--shift", f"id2={folders / 'id'}",
                "--linear-probe", "--train-data", str(folders / "train"), "--k-shot", "2", "--fit", str(line))
    assert cli(argv) == 0
    out = tmp_path / "out"
    printed = capsys.readouterr().out
    assert "tiny-vit/zeroshot" in printed and "tiny-vit/probe-k2" in printed and "tinted" in printed
    doc = json.loads((out / "tiny-vit.json").read_text())
    assert doc["model"] == "tiny-vit" and doc["pretrained"] == "random"
    records = doc["results"]
    assert len(records) == 3 * 3  # 3 heads × (id + 2 shifts)
    tinted = next(r for r in records if r["dataset"] == "tinted" and r["task"] == "zeroshot_classification")
    m = tinted["metrics"]
    assert set(m) == {"acc1", "id_acc1_on_classes", "expected_acc1", "effective_robustness", "logit_distance"}
    assert m["effective_robustness"] == pytest.approx(m["acc1"] - LinearFit(1.0, -0.5).predict(m["id_acc1_on_classes"]))
    assert tinted["data"]["n_samples"] == 6 and tinted["n_id_on_classes"] == 8
    probe = [r for r in records if r["task"] == "linear_probe" and r["set"] == "id"]
    assert {r["head"] for r in probe} == {"tiny-vit/probe", "tiny-vit/probe-k2"} and "lp_acc1" in probe[0]["metrics"]
    summary = json.loads((out / "robustness.json").read_text())
    assert summary["fits"]["tinted"]["slope"] == 1.0 and len(summary["points"]) == 3
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input(folders, tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match=r"class\(es\) purple are not among the in-distribution classes"):
        cli(base(folders, tmp_path, "--shift", f"odd={folders / 'odd'}", "--fit", "baseline"))
    with pytest.raises(SystemExit) as e:
        cli(base(folders, tmp_path, "--shift", str(folders / "odd")))
    assert e.value.code == 2
    assert "expected NAME=DATA" in capsys.readouterr().err
    with pytest.raises(ValueError, match="given more than once"):
        cli(base(folders, tmp_path, "--shift", f"a={folders / 'id'}", "--shift", f"a={folders / 'id'}", "--fit",
                 "baseline"))
    with pytest.raises(ValueError, match="go together"):
        cli(base(folders, tmp_path, "--shift", f"a={folders / 'id'}", "--linear-probe", "--fit", "baseline"))
    with pytest.raises(ValueError, match="--fit all: a line needs at least two points"):  # one zero-shot point
        cli(base(folders, tmp_path, "--shift", f"a={folders / 'id'}"))
    with pytest.raises(ValueError, match="--fit baseline: no shipped line for a"):
        cli(base(folders, tmp_path, "--shift", f"a={folders / 'id'}", "--fit", "baseline"))


def test_registered_on_the_eval_verb() -> None:
    from clipforge.cli import eval as eval_cli

    parser = argparse.ArgumentParser(prog="clipforge")
    eval_cli.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["eval", "robustness", "--model", "m", "--id", "x", "--shift", "a=b", "--output", "o"])
    assert args.func is eval_robustness.run_robustness and args.shift == [("a", "b")]


def test_imagenet_r_mask_end_to_end(tmp_path) -> None:
    """ImageNet-shaped folders with the fake colour model: the shipped 200-class mask decides the prediction."""
    wnids = imagenet_data()["wnids"]
    r_classes = imagenet_subset("imagenet-r")
    red, green, blue = r_classes[0], r_classes[1], 0  # blue is tench (class 0), outside ImageNet-R's 200
    names = [f"thing {i}" for i in range(1000)]
    names[red], names[green], names[blue] = "red", "green", "blue"
    for w in wnids:
        (tmp_path / "val" / w).mkdir(parents=True)
    for i, c in ((red, "red"), (green, "green"), (blue, "blue")):
        solid(c).save(tmp_path / "val" / wnids[i] / "0.png")
    for i, rgb in ((red, (160, 0, 255)), (green, (0, 160, 255))):  # blue leads both
        (tmp_path / "r" / wnids[i]).mkdir(parents=True)
        Image.new("RGB", (8, 8), rgb).save(tmp_path / "r" / wnids[i] / "0.png")
    val, r = ImageFolder(tmp_path / "val"), ImageFolder(tmp_path / "r")
    mapping = class_mapping("imagenet-r", r.classes, val.classes)
    assert len(mapping.subset) == 2  # the folders given: two of ImageNet-R's classes
    points = measure_model(fake_model(), "fake", "none", val, {"imagenet-r": (r, mapping)}, names,
                           ["a photo of a {}."], use_cache=False)
    assert points[0].id_acc == 1.0
    assert points[0].shifts["imagenet-r"] == ShiftScore(1.0, 1.0, 2, 2)  # unmasked, both would be "blue"


def test_main_prints_one_line_errors(folders, tmp_path, capsys) -> None:
    from clipforge.cli.main import main

    code = main(base(folders, tmp_path, "--shift", f"odd={folders / 'odd'}", "--fit", "baseline"))
    err = capsys.readouterr().err
    assert code == 2 and "clipforge eval: error: --shift odd: class(es) purple are not among" in err
