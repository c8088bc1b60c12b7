"""Linear probe: the torch L-BFGS and scikit-learn solvers agree; the C sweep, few-shot draws, feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipforge.eval import Features, extract_features, fit_logreg_sklearn, fit_logreg_torch, linear_probe
from clipforge.eval.datasets import Sample
from clipforge.eval.linear_probe import few_shot_indices, train_val_split
from helpers.fakes import COLOURS, fake_model, solid

pytest.importorskip("sklearn")


def synthetic(n_per_class: int, seed: int, num_classes: int = 5, dim: int = 16) -> Features:
    """Overlapping Gaussian clusters (the Bayes rate is well below 100%), L2-normalised like image features."""
    rng = np.random.default_rng(1234)
    centres = rng.normal(size=(num_classes, dim))
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = centres[y] + 1.4 * rng.normal(size=(len(y), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return Features(x.astype(np.float32), y)


@pytest.fixture(scope="module")
def data() -> tuple[Features, Features]:
    return synthetic(50, seed=0), synthetic(100, seed=1)


@pytest.mark.parametrize("C", [0.1, 3.0])
def test_solvers_find_the_same_minimiser(data, C: float) -> None:
    train, test = data
    wt, bt = fit_logreg_torch(train.x, train.y, C, 5)
    ws, bs = fit_logreg_sklearn(train.x, train.y, C, 5)
    # Softmax is invariant to a common shift of the logits, so compare centred logits.
    lt, ls = test.x @ wt + bt, test.x @ ws + bs
    lt, ls = lt - lt.mean(1, keepdims=True), ls - ls.mean(1, keepdims=True)
    np.testing.assert_allclose(lt, ls, atol=2e-3 * max(1.0, np.abs(ls).max()))


def test_probe_accuracies_agree_within_half_a_percent(data) -> None:
    train, test = data
    rt = linear_probe(train, test, 5, backend="torch")
    rs = linear_probe(train, test, 5, backend="sklearn")
    assert abs(rt.metrics["lp_acc1"] - rs.metrics["lp_acc1"]) <= 0.005
    assert rt.C == pytest.approx(rs.C)
    assert 0.4 < rt.metrics["lp_acc1"] < 0.99  # a real problem: neither trivial nor hopeless
    assert set(rt.metrics) == {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall"}


def test_sweep_is_coarse_then_refined(data) -> None:
    train, test = data
    r = linear_probe(train, test, 5, backend="sklearn")
    logs = sorted(np.log10(list(r.sweep)))
    assert {-6, -4, -2, 0, 2, 4, 6} <= {round(v, 5) for v in logs}
    assert len(r.sweep) == 7 + 2 * 4  # four halvings: 1, 1/2, 1/4, 1/8 decade
    assert r.C == max(r.sweep, key=lambda c: (r.sweep[c], -c))
    assert r.sweep[r.C] >= max(r.sweep[10.0**k] for k in range(-6, 7, 2))


def test_few_shot_keeps_k_per_class(data) -> None:
    train, test = data
    idx = few_shot_indices(train.y, 4, seed=3)
    assert np.bincount(train.y[idx]).tolist() == [4] * 5
    r = linear_probe(train, test, 5, backend="torch", k_shot=4)
    assert r.n_train == 20
    with pytest.raises(ValueError, match="k_shot"):
        linear_probe(train, test, 5, k_shot=0)


def test_train_val_split_is_stratified() -> None:
    y = np.repeat(np.arange(3), 10)
    tr, va = train_val_split(y, 0.2)
    assert np.bincount(y[va]).tolist() == [2, 2, 2]
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 30


def test_two_classes_with_sklearn() -> None:
    f = synthetic(30, seed=0, num_classes=2)
    r = linear_probe(f, f, 2, backend="sklearn", C=1.0)
    assert r.metrics["lp_acc1"] > 0.6 and r.metrics["lp_acc5"] is None


def test_unknown_backend() -> None:
    f = synthetic(5, 0)
    with pytest.raises(ValueError, match="unknown probe backend"):
        linear_probe(f, f, backend="svm", C=1.0)


def test_features_are_cached_per_model(tmp_path) -> None:
    samples = [Sample(solid(c), label=i) for i, c in enumerate(COLOURS)]
    m = fake_model()
    f1 = extract_features(m, samples, batch_size=2, cache_path=tmp_path / "f.npz")
    assert f1.x.shape == (3, 3) and f1.y.tolist() == [0, 1, 2]
    f2 = extract_features(m, [], cache_path=tmp_path / "f.npz")  # served from the cache: no data needed
    np.testing.assert_array_equal(f1.x, f2.x)
    other = fake_model()
    with torch.no_grad():
        other.model.proj.weight.mul_(2)
    other._fingerprint = None
    with pytest.raises(ValueError, match="no images"):
        extract_features(other, [], cache_path=tmp_path / "f.npz")  # another model: the cache is not reused
