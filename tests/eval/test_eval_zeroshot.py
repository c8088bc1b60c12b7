"""Zero-shot classification: prompt ensembling, the on-disk classifier cache, metrics with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.eval import EvalModel, build_classifier, classification_metrics, evaluate_zeroshot, plot_confusion
from clipforge.eval.adapter import model_fingerprint
from clipforge.eval.datasets import Sample
from clipforge.eval.prompts import load_classnames, load_templates
from clipforge.eval.zeroshot import ClassificationMeter, classifier_key
from helpers.fakes import COLOURS, FakeCLIP, fake_model, fake_processor, fake_transform, solid

TEMPLATES = ["a photo of a {}.", "a {} thing", "{} red"]


def test_builtin_sets_have_the_published_counts() -> None:
    assert len(load_classnames("imagenet")) == 1000
    assert len(load_templates("imagenet")) == 80
    assert len(load_classnames("cifar10")) == 10
    assert len(load_classnames("cifar100")) == 100
    assert len(load_templates("cifar10")) == len(load_templates("cifar100")) == 18
    assert load_classnames("imagenet")[:3] == ["tench", "goldfish", "great white shark"]
    assert load_templates("imagenet")[0] == "a bad photo of a {}."
    assert all("{}" in t for t in load_templates("imagenet"))
    assert len(set(load_classnames("cifar100"))) == 100


def test_missing_classnames_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="built-in sets"):
        load_classnames(tmp_path / "nope.txt")
    (tmp_path / "t.txt").write_text("no placeholder\n")
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        load_templates(tmp_path / "t.txt")


def test_classifier_is_the_renormalised_mean_of_normalised_prompt_embeddings(tmp_path) -> None:
    m = fake_model()
    w = build_classifier(m, list(COLOURS), TEMPLATES, cache_dir=tmp_path, batch_size=4)
    assert w.shape == (3, 3)
    for j, c in enumerate(COLOURS):
        e = F.normalize(fake_processor([t.format(c) for t in TEMPLATES]), dim=-1)
        expected = F.normalize(e.mean(0), dim=0)
        torch.testing.assert_close(w[:, j], expected)
    torch.testing.assert_close(w.norm(dim=0), torch.ones(3))


def test_classifier_cache_hits_and_misses(tmp_path) -> None:
    m = fake_model()
    calls = []
    encode = m.encode_texts
    m.encode_texts = lambda *a, **k: calls.append(1) or encode(*a, **k)  # type: ignore[method-assign]
    w1 = build_classifier(m, list(COLOURS), TEMPLATES, cache_dir=tmp_path)
    n = len(calls)
    w2 = build_classifier(m, list(COLOURS), TEMPLATES, cache_dir=tmp_path)
    assert len(calls) == n and torch.equal(w1, w2)  # served from disk
    build_classifier(m, list(COLOURS), TEMPLATES[:1], cache_dir=tmp_path)
    assert len(calls) > n  # other templates, other key
    assert len(list(tmp_path.glob("*.npy"))) == 2
    fp = m.fingerprint()
    assert classifier_key(fp, ["a", "b"], ["{}"]) != classifier_key(fp, ["b", "a"], ["{}"])


def test_fingerprint_follows_the_weights() -> None:
    a, b = FakeCLIP(), FakeCLIP()
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.proj.weight[1, 1] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)


def test_metrics_known_answer() -> None:
    # 6 classes, 4 samples. Ranking of each row (best first) is given by the logits.
    logits = torch.tensor([
        [9, 8, 7, 6, 5, 4.0],  # target 0: top-1 hit
        [9, 8, 7, 6, 5, 4.0],  # target 4: 5th → top-5 hit only
        [9, 8, 7, 6, 5, 4.0],  # target 5: 6th → miss
        [0, 9, 1, 2, 3, 4.0],  # target 1: top-1 hit
    ])
    targets = torch.tensor([0, 4, 5, 1])
    m = classification_metrics(logits, targets)
    assert m["acc1"] == pytest.approx(2 / 4)
    assert m["acc5"] == pytest.approx(3 / 4)
    # Classes with samples: 0 (1/1), 1 (1/1), 4 (0/1), 5 (0/1) → mean recall 0.5.
    assert m["mean_per_class_recall"] == pytest.approx(0.5)


def test_mean_per_class_recall_weights_classes_equally() -> None:
    meter = ClassificationMeter(5)
    # Class 0: 8 samples all right; class 1: 2 samples all wrong → accuracy 0.8, mean recall 0.5.
    logits = torch.zeros(10, 5)
    logits[:, 0] = 1.0
    meter.update(logits, torch.tensor([0] * 8 + [1] * 2))
    assert meter.metrics()["acc1"] == pytest.approx(0.8)
    assert meter.metrics()["mean_per_class_recall"] == pytest.approx(0.5)
    assert meter.confusion[1, 0] == 2


def test_acc5_is_none_with_fewer_than_five_classes() -> None:
    assert classification_metrics(torch.eye(3), torch.arange(3))["acc5"] is None


def test_zeroshot_on_colour_images_is_perfect(tmp_path) -> None:
    samples = [Sample(solid(c), label=i) for i, c in enumerate(COLOURS) for _ in range(4)]
    r = evaluate_zeroshot(fake_model(), samples, list(COLOURS), TEMPLATES[:2], batch_size=5, cache_dir=tmp_path)
    assert r.metrics["acc1"] == 1.0 and r.metrics["mean_per_class_recall"] == 1.0
    assert r.n_samples == 12
    np.testing.assert_array_equal(r.confusion, 4 * np.eye(3))
    png = plot_confusion(r.confusion, list(COLOURS), tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zeroshot_swapped_names_score_zero(tmp_path) -> None:
    samples = [Sample(solid(c), label=i) for i, c in enumerate(COLOURS)]
    r = evaluate_zeroshot(fake_model(), samples, ["green", "blue", "red"], ["{}"], cache_dir=tmp_path)
    assert r.metrics["acc1"] == 0.0


def test_label_outside_classes_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="outside"):
        evaluate_zeroshot(fake_model(), [Sample(solid("red"), label=7)], list(COLOURS), ["{}"], cache_dir=tmp_path)


def test_adapter_encodes_through_the_processor() -> None:
    m = EvalModel(FakeCLIP(), fake_transform, fake_processor)
    out = m.encode_texts(["red"] * 7, batch_size=3)
    assert out.shape == (7, 3)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(7))
    assert m.logit_scale() == pytest.approx(100.0)


def test_unlabelled_samples_are_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="no class label"):
        evaluate_zeroshot(fake_model(), [Sample(solid("red"), captions=["red"])], list(COLOURS), ["{}"],
                          cache_dir=tmp_path)
