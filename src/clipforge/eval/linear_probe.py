"""Linear probe: L2-regularised logistic regression on frozen image features (CLIP paper, appendix A.3).

Features are extracted once (L2-normalised image embeddings) and cached as ``.npz``. The regularisation
strength is chosen on a validation split carved from the training set by the paper's search: a coarse
sweep over C ∈ {1e-6, 1e-4, …, 1e6}, then repeated halving of the (log10) step around the best value
until it reaches 1/8 of a decade. The final classifier is refitted with that C on the whole training set.

Two solvers minimise the same objective, ``C · Σ_i CE_i + ½‖W‖²`` (bias unregularised, as
scikit-learn's ``LogisticRegression``): full-batch L-BFGS in torch (runs on a GPU when given one) and
scikit-learn's lbfgs. ``k_shot`` keeps k training examples per class for few-shot probes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipforge.eval.adapter import EvalModel
from clipforge.eval.datasets import EvalDataset, iter_batches
from clipforge.eval.zeroshot import classification_metrics


@dataclass
class Features:
    """Image features (N, D) float32, integer labels (N,), and the images skipped while extracting."""

    x: np.ndarray
    y: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)


def extract_features(model: EvalModel, dataset: EvalDataset | Iterable, batch_size: int = 64,
                     cache_path: str | Path | None = None, progress: bool = False) -> Features:
    """Embeds a labelled dataset once; with ``cache_path``, reuses a cache made by the same model.

    The cache (``.npz``: ``x``, ``y``, ``fingerprint``, ``skipped``) is only reused when its fingerprint
    equals ``model.fingerprint()``; otherwise it is rewritten.

    Raises:
        ValueError: When no image could be read.
    """
    if cache_path is not None and Path(cache_path).is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            if str(z["fingerprint"]) == model.fingerprint():
                skipped = [tuple(s.split("\t", 1)) for s in z["skipped"].tolist()]
                return Features(z["x"], z["y"], skipped)  # type: ignore[arg-type]
    xs, ys = [], []
    for images, metas in tqdm(iter_batches(dataset, model.transform, batch_size), desc="features", unit="batch",
                              disable=not progress):
        if any(m.label is None for m in metas):
            raise ValueError(f"{metas[0].source}: no class label (is this a captioned retrieval dataset?)")
        xs.append(model.encode_images(images).numpy())
        ys.extend(m.label for m in metas)
    skipped = list(getattr(dataset, "skipped", []))
    if not xs:
        raise ValueError(f"no images could be read ({len(skipped)} skipped)")
    feats = Features(np.concatenate(xs).astype(np.float32), np.asarray(ys, dtype=np.int64), skipped)
    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_path, x=feats.x, y=feats.y, fingerprint=np.array(model.fingerprint()),
                 skipped=np.array([f"{a}\t{b}" for a, b in skipped], dtype=str))
    return feats


def few_shot_indices(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Indices of (up to) ``k`` random examples of every class, sorted."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def train_val_split(labels: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stratified random split: ``val_fraction`` of each class (at least one when the class has two) to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(len(idx) - 1, max(1, round(val_fraction * len(idx)))) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


Solver = Callable[[np.ndarray, np.ndarray, float, int], tuple[np.ndarray, np.ndarray]]


def fit_logreg_torch(x: np.ndarray, y: np.ndarray, C: float, num_classes: int, max_iter: int = 1000,
                     device: torch.device | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, ``C · Σ CE + ½‖W‖²``, by full-batch L-BFGS; returns ``(W (D, C), b (C,))``.

    Float64 on the CPU, float32 on a GPU.
    """
    device = torch.device(device or "cpu")
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    xt = torch.as_tensor(x, dtype=dtype, device=device)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    w = torch.zeros(x.shape[1], num_classes, dtype=dtype, device=device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=dtype, device=device, requires_grad=True)
    # Divided by n: mean CE + ‖W‖² / (2 C n) has sklearn's minimiser and a well-scaled gradient.
    l2 = 1.0 / (2.0 * C * len(x))
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().cpu().numpy(), b.detach().cpu().numpy()


def fit_logreg_sklearn(x: np.ndarray, y: np.ndarray, C: float, num_classes: int,
                       max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The same model by scikit-learn's lbfgs; returns ``(W (D, C), b (C,))`` over all ``num_classes``."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:
        raise ValueError("the scikit-learn probe needs scikit-learn: pip install 'clipforge[probe]'") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=C, max_iter=max_iter, tol=1e-6).fit(x, y)
    w = np.zeros((x.shape[1], num_classes))
    b = np.full(num_classes, -1e9)  # classes absent from training are never predicted
    if len(clf.classes_) == 2:  # sklearn keeps one weight vector for two classes: logits (0, w·x + b)
        w[:, clf.classes_[1]], b[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        b[clf.classes_[0]] = 0.0
    else:
        w[:, clf.classes_], b[clf.classes_] = clf.coef_.T, clf.intercept_
    return w, b


def _solver(backend: str, device: torch.device | str | None, max_iter: int) -> Solver:
    if backend == "torch":
        return lambda x, y, C, n: fit_logreg_torch(x, y, C, n, max_iter, device)
    if backend == "sklearn":
        return lambda x, y, C, n: fit_logreg_sklearn(x, y, C, n, max_iter)
    raise ValueError(f"unknown probe backend {backend!r} (torch or sklearn)")


def _accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ w + b).argmax(1) == y).mean())


def sweep_C(train: Features, val: Features, num_classes: int, solver: Solver,
            progress: bool = False) -> tuple[float, dict[float, float]]:
    """The paper's search for C: coarse (1e-6 … 1e6, every 2 decades), then halve the step around the best.

    Returns:
        ``(best C, {C: validation accuracy})``; ties go to the smaller C (stronger regularisation).
    """
    scores: dict[float, float] = {}

    def score(log_c: float) -> float:
        C = 10.0 ** log_c
        if C not in scores:
            w, b = solver(train.x, train.y, C, num_classes)
            scores[C] = _accuracy(w, b, val.x, val.y)
        return scores[C]

    def best() -> float:
        return max(scores, key=lambda c: (scores[c], -c))

    for log_c in tqdm(range(-6, 7, 2), desc="C sweep", disable=not progress):
        score(float(log_c))
    step = 2.0
    while step > 1 / 8:
        step /= 2
        centre = math.log10(best())
        score(centre - step)
        score(centre + step)
    return best(), scores


@dataclass
class ProbeResult:
    """CLIP_benchmark's linear-probe metrics, the chosen C and the validation sweep."""

    metrics: dict[str, float | None]
    C: float
    sweep: dict[float, float]
    n_train: int


def linear_probe(train: Features, test: Features, num_classes: int | None = None, backend: str = "torch",
                 val_fraction: float = 0.2, k_shot: int | None = None, C: float | None = None, seed: int = 0,
                 max_iter: int = 1000, device: torch.device | str | None = None,
                 progress: bool = False) -> ProbeResult:
    """Fits a probe on ``train`` (C chosen on a validation split unless given) and scores it on ``test``.

    Args:
        train: Training features.
        test: Test features.
        num_classes: C; the largest label + 1 when ``None``.
        backend: ``torch`` (L-BFGS, on ``device``) or ``sklearn``.
        val_fraction: Share of each class held out to choose C.
        k_shot: Keep only k training examples per class (few-shot); all when ``None``.
        C: Skip the sweep and use this inverse regularisation strength.
        seed: For the few-shot draw and the validation split.
        max_iter: L-BFGS iterations per fit.
        device: Where the torch solver runs.
        progress: Show the sweep's progress.

    Returns:
        Metrics ``lp_acc1``, ``lp_acc5``, ``lp_mean_per_class_recall`` with the chosen C.
    """
    if num_classes is None:
        num_classes = int(max(train.y.max(), test.y.max())) + 1
    solver = _solver(backend, device, max_iter)
    if k_shot is not None:
        if k_shot < 1:
            raise ValueError(f"k_shot must be at least 1, got {k_shot}")
        idx = few_shot_indices(train.y, k_shot, seed)
        train = Features(train.x[idx], train.y[idx])
    sweep: dict[float, float] = {}
    if C is None:
        tr, va = train_val_split(train.y, val_fraction, seed)
        if len(va) == 0:
            raise ValueError("too few training examples per class to hold out a validation split; pass C")
        C, sweep = sweep_C(Features(train.x[tr], train.y[tr]), Features(train.x[va], train.y[va]), num_classes,
                           solver, progress)
    w, b = solver(train.x, train.y, C, num_classes)
    logits = torch.from_numpy(test.x.astype(np.float64) @ w + b)
    m = classification_metrics(logits, torch.from_numpy(test.y))
    metrics = {"lp_acc1": m["acc1"], "lp_acc5": m["acc5"], "lp_mean_per_class_recall": m["mean_per_class_recall"]}
    return ProbeResult(metrics, C, sweep, len(train.y))
