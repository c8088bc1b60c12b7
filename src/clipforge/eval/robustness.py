"""Effective robustness: accuracy under distribution shift against the trend of in-distribution accuracy.

Taori et al. 2020 ("Measuring Robustness to Natural Distribution Shifts in Image Classification") found that, for
models trained on ImageNet, accuracy on a shifted set (ImageNet-V2, -Sketch, -R, -A, ObjectNet) is close to a linear
function of ImageNet accuracy once both are put on logit axes, ``logit(p) = log(p / (1 - p))``. A model's *effective
robustness* is how far its shifted accuracy lies above that line: ``acc_ood - sigmoid(slope * logit(acc_id) +
intercept)``, in accuracy units. Radford et al. 2021 (CLIP, §3.3) showed that zero-shot CLIP lies far above the line
of ImageNet-trained models, and that a logistic regression fitted on CLIP's own features to ImageNet gains ImageNet
accuracy but gives most of that robustness back.

Shifted sets of the same classes are scored with *class-subset masks*: when a shifted set covers only some of the
in-distribution classes (ImageNet-R's and ImageNet-A's 200, ObjectNet's 113 mapped onto 125 ImageNet classes), the
logits are restricted to those classes before the argmax, so a class outside the subset can never be predicted; the
in-distribution accuracy paired with it (the x of the point) is measured the same way, on the in-distribution
images of those classes (Taori et al.'s ``val-on-imagenet-r-classes``).

Shipped data (``eval/data/robustness_imagenet.json``; sources in its ``_sources``): ImageNet's WordNet ids in
class-index order, ImageNet-R's and ImageNet-A's 200 classes, ObjectNet's folder → ImageNet mapping, and baseline
lines fitted by clipforge over imagenet-testbed's standard models (not coefficients the papers print). ImageNet-V2's
folders are class indices, ImageNet-Sketch's WordNet ids.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipforge.eval.adapter import EvalModel
from clipforge.eval.datasets import EvalDataset
from clipforge.eval.linear_probe import (
    Features,
    extract_features,
    few_shot_indices,
    fit_logreg_torch,
    sweep_C,
    train_val_split,
)
from clipforge.eval.prompts import load_classnames
from clipforge.eval.zeroshot import build_classifier

IMAGENET_SHIFTS = ("imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet")
ACC_CLIP = 1e-4  # accuracies are clipped to [ACC_CLIP, 1 - ACC_CLIP] before the logit: 0 and 1 have none
Head = tuple[np.ndarray, np.ndarray]  # (W (D, C), b (C,)): logits = x @ W + b


# --- Logit axes and the linear trend. ---


def logit(p: float | np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of accuracies in [0, 1], clipped to ``[ACC_CLIP, 1 - ACC_CLIP]`` first."""
    q = np.clip(np.asarray(p, dtype=np.float64), ACC_CLIP, 1 - ACC_CLIP)
    return np.log(q / (1 - q))


def inv_logit(z: float | np.ndarray) -> np.ndarray:
    """The sigmoid, ``1 / (1 + exp(-z))``: logit axes back to accuracy."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


@dataclass(frozen=True)
class LinearFit:
    """A line on logit axes: ``logit(acc_ood) ≈ slope * logit(acc_id) + intercept``.

    Attributes:
        slope: The line's slope.
        intercept: Its intercept.
        n_points: How many points it was fitted over (0 for a line given from elsewhere).
        source: Where it came from, for the results and the plot.
    """

    slope: float
    intercept: float
    n_points: int = 0
    source: str = ""

    def predict(self, id_acc: float) -> float:
        """The shifted accuracy the line expects at in-distribution accuracy ``id_acc``."""
        return float(inv_logit(self.slope * logit(id_acc) + self.intercept))

    def effective_robustness(self, id_acc: float, ood_acc: float) -> float:
        """Taori et al.'s effective robustness: ``ood_acc - predict(id_acc)``, in accuracy units."""
        return ood_acc - self.predict(id_acc)

    def logit_distance(self, id_acc: float, ood_acc: float) -> float:
        """The vertical distance above the line on the logit axes: ``logit(ood) - (slope * logit(id) + b)``."""
        return float(logit(ood_acc) - (self.slope * logit(id_acc) + self.intercept))


def fit_line(id_accs: Sequence[float], ood_accs: Sequence[float], source: str = "") -> LinearFit:
    """The least-squares line of ``logit(ood)`` on ``logit(id)``.

    Raises:
        ValueError: With fewer than two points, or when every point has the same in-distribution accuracy.
    """
    if len(id_accs) != len(ood_accs):
        raise ValueError(f"{len(id_accs)} in-distribution accuracies but {len(ood_accs)} shifted ones")
    x, y = logit(np.asarray(id_accs)), logit(np.asarray(ood_accs))
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(f"a line needs at least two points with different in-distribution accuracies, got "
                         f"{len(x)} ({', '.join(f'{a:.3f}' for a in id_accs)})")
    slope, intercept = np.polyfit(x, y, 1)
    return LinearFit(float(slope), float(intercept), len(x), source)


# --- Shipped ImageNet class lists and the class mapping of a shifted set. ---


@cache
def imagenet_data() -> dict[str, Any]:
    """The shipped ``robustness_imagenet.json`` (see the module docstring)."""
    path = resources.files("clipforge.eval").joinpath("data").joinpath("robustness_imagenet.json")
    text = path.read_text(encoding="utf-8")
    return dict(json.loads(text))


def imagenet_subset(name: str) -> list[int]:
    """The ImageNet class indices a benchmark covers: 200 for ``imagenet-r`` / ``imagenet-a``, 125 for ``objectnet``,
    all 1,000 for ``imagenet-v2`` / ``imagenet-sketch``.

    Raises:
        ValueError: For a name outside ``IMAGENET_SHIFTS``.
    """
    data = imagenet_data()
    index = {w: i for i, w in enumerate(data["wnids"])}
    if name in ("imagenet-r", "imagenet-a"):
        return sorted(index[w] for w in data[name])
    if name == "objectnet":
        return sorted({index[w] for ws in data["objectnet"].values() for w in ws})
    if name in ("imagenet-v2", "imagenet-sketch"):
        return list(range(len(index)))
    raise ValueError(f"unknown ImageNet shift {name!r}; one of {list(IMAGENET_SHIFTS)}")


def baseline_fits() -> dict[str, LinearFit]:
    """The shipped ImageNet baseline lines, by shift name (see ``_sources.baseline_fits`` in the data file)."""
    data = imagenet_data()
    source = "imagenet-testbed standard models (fitted by clipforge)"
    return {k: LinearFit(v["slope"], v["intercept"], v["n_models"], source) for k, v in data["baseline_fits"].items()}


@dataclass(frozen=True)
class ClassMapping:
    """How a shifted set's classes line up with the in-distribution classes.

    Attributes:
        name: The shifted set's name.
        classes: Its classes, in its label order.
        targets: Per shifted class, the in-distribution class indices a prediction may hit to be right (several for
            an ObjectNet class that maps onto a few ImageNet ones; none for a class left out of the scoring).
        num_id_classes: How many in-distribution classes there are.
    """

    name: str
    classes: tuple[str, ...]
    targets: tuple[tuple[int, ...], ...]
    num_id_classes: int

    @property
    def subset(self) -> tuple[int, ...]:
        """The in-distribution classes the logits are restricted to: every target, sorted."""
        return tuple(sorted({t for ts in self.targets for t in ts}))


def _key(name: str) -> str:
    return name.replace("_", " ").strip().lower()


def _imagenet_keys(name: str, classes: Sequence[str]) -> list[list[str]]:
    """The WordNet ids each class folder of the ImageNet benchmark ``name`` counts as ([] when it is not scored)."""
    data = imagenet_data()
    wnids = data["wnids"]
    if name == "imagenet-v2":
        bad = [c for c in classes if not (c.isdigit() and int(c) < len(wnids))]
        if bad:
            raise ValueError(f"--shift {name}: ImageNet-V2's folders are class indices 0..999, got {bad[:5]}")
        return [[wnids[int(c)]] for c in classes]
    if name == "objectnet":
        # ObjectNet has 313 classes; only the 113 that map onto ImageNet are scored (the others' targets are empty).
        mapping = data["objectnet"]
        if not any(c in mapping for c in classes):
            raise ValueError(f"--shift objectnet: none of its folders ({', '.join(classes[:4])}, …) is one of "
                             f"ObjectNet's 113 ImageNet classes ({', '.join(list(mapping)[:4])}, …)")
        return [list(mapping.get(c, [])) for c in classes]
    allowed = set(data[name]) if name in ("imagenet-r", "imagenet-a") else set(wnids)
    bad = [c for c in classes if c not in allowed]
    if bad:
        what = f"one of {name}'s 200 classes" if name in ("imagenet-r", "imagenet-a") else "an ImageNet WordNet id"
        raise ValueError(f"--shift {name}: folder(s) {', '.join(bad[:5])} are not {what}")
    return [[c] for c in classes]


def _imagenet_index(id_classes: Sequence[str]) -> dict[str, int] | None:
    """WordNet id → in-distribution index when the ID classes are ImageNet's (WordNet-id folders, or the 1,000 class
    names in index order); ``None`` otherwise."""
    wnids = imagenet_data()["wnids"]
    if id_classes and set(id_classes) <= set(wnids):
        return {c: i for i, c in enumerate(id_classes)}
    if [_key(c) for c in id_classes] == [_key(c) for c in load_classnames("imagenet")]:
        return {w: i for i, w in enumerate(wnids)}
    return None


def class_mapping(name: str, shift_classes: Sequence[str], id_classes: Sequence[str]) -> ClassMapping:
    """Lines a shifted set's classes up with the in-distribution classes.

    A name in ``IMAGENET_SHIFTS`` reads its folders with that benchmark's shipped mapping (the ID set must then be
    ImageNet: WordNet-id folders, or the 1,000 ImageNet class names); any other shifted set's classes are matched to
    the ID classes by name (case, and underscores for spaces, ignored).

    Raises:
        ValueError: When a shifted class has no ID class of its name (naming them), or the ID set is not ImageNet for
            an ImageNet benchmark.
    """
    if not shift_classes:
        raise ValueError(f"--shift {name}: no classes")
    if name in IMAGENET_SHIFTS:
        index = _imagenet_index(id_classes)
        if index is None:
            raise ValueError(f"--shift {name}: the in-distribution classes ({', '.join(id_classes[:3])}, …) are not "
                             "ImageNet's; expected WordNet-id folders (n01440764, …) or the 1,000 ImageNet class names")
        keys = _imagenet_keys(name, shift_classes)
        missing = sorted({k for ks in keys for k in ks if k not in index})
        if missing:
            raise ValueError(f"--shift {name}: class(es) {', '.join(missing[:5])} are not in the in-distribution set")
        targets = tuple(tuple(sorted(index[k] for k in ks)) for ks in keys)
    else:
        index = {_key(c): i for i, c in enumerate(id_classes)}
        missing = [c for c in shift_classes if _key(c) not in index]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            known = ", ".join(id_classes[:5]) + (", …" if len(id_classes) > 5 else "")
            raise ValueError(f"--shift {name}: class(es) {', '.join(missing[:5])}{more} are not among the "
                             f"in-distribution classes ({known})")
        targets = tuple((index[_key(c)],) for c in shift_classes)
    return ClassMapping(name, tuple(shift_classes), targets, len(id_classes))


def identity_mapping(name: str, num_classes: int, subset: Iterable[int] | None = None) -> ClassMapping:
    """The in-distribution set against itself, scored on ``subset`` only (all classes when ``None``)."""
    keep = set(range(num_classes) if subset is None else subset)
    targets = tuple((i,) if i in keep else () for i in range(num_classes))
    return ClassMapping(name, tuple(str(i) for i in range(num_classes)), targets, num_classes)


def masked_top1(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                mapping: ClassMapping) -> tuple[int, int]:
    """``(correct, scored)``: top-1 over ``mapping.subset``'s logit columns only; a sample is right when the argmax is
    one of its class's targets. Samples of classes without targets are not scored."""
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if logits.shape[1] != mapping.num_id_classes:
        raise ValueError(f"logits have {logits.shape[1]} columns for {mapping.num_id_classes} classes")
    subset = torch.tensor(mapping.subset, dtype=torch.long)
    if len(subset) == 0:
        return 0, 0
    pred = subset[logits[:, subset].argmax(dim=1)]  # (N,) in-distribution class indices, always inside the subset
    hits = torch.zeros(len(mapping.targets), mapping.num_id_classes, dtype=torch.bool)  # (S, C)
    for s, ts in enumerate(mapping.targets):
        hits[s, list(ts)] = True
    scored = hits.any(dim=1)[labels]
    correct = hits[labels, pred] & scored
    return int(correct.sum()), int(scored.sum())


# --- Heads (zero-shot and linear probes) scored on the ID set and each shift. ---


def train_probe(train: Features, num_classes: int, C: float | None = None, k_shot: int | None = None, seed: int = 0,
                val_fraction: float = 0.2, max_iter: int = 1000,
                device: torch.device | str | None = None) -> tuple[Head, float]:
    """A logistic-regression probe on frozen features (``clipforge.eval.linear_probe``'s objective and C search).

    Args:
        train: Training features (the in-distribution data's train split).
        num_classes: C.
        C: Inverse L2 strength; chosen on a validation split carved from ``train`` when ``None``.
        k_shot: Keep k training examples per class (fewer-data probes: points lower on the ID axis).
        seed: Of the few-shot draw and the validation split.
        val_fraction: Share of each class held out to choose C.
        max_iter: L-BFGS iterations per fit.
        device: Where the solver runs.

    Returns:
        ``((W (D, C), b (C,)), C)``.

    Raises:
        ValueError: When C must be chosen but no class has two examples to hold one out.
    """
    if k_shot is not None:
        idx = few_shot_indices(train.y, k_shot, seed)
        train = Features(train.x[idx], train.y[idx])
    if C is None:
        tr, va = train_val_split(train.y, val_fraction, seed)
        if len(va) == 0:
            raise ValueError("too few training examples per class to hold out a validation split; give C")
        C, _ = sweep_C(Features(train.x[tr], train.y[tr]), Features(train.x[va], train.y[va]), num_classes,
                       lambda x, y, c, n: fit_logreg_torch(x, y, c, n, max_iter, device))
    w, b = fit_logreg_torch(train.x, train.y, C, num_classes, max_iter, device)
    return (w, b), C


@dataclass(frozen=True)
class ShiftScore:
    """A head on one shifted set: its top-1 there, and on the in-distribution images of the set's classes."""

    acc: float
    id_acc: float
    n: int
    n_id: int


@dataclass
class Point:
    """One model-and-head: a point of the OOD-vs-ID plot per shifted set.

    Attributes:
        label: Unique name in the plot and the results (``MODEL/zeroshot``, ``MODEL/probe``, ``MODEL/probe-k4``).
        model: The model's name.
        pretrained: Where its weights came from.
        head: ``zeroshot`` or ``linear_probe``.
        id_acc: Top-1 on the whole in-distribution set (of ``n_id`` images).
        shifts: Per shifted set's name, its :class:`ShiftScore`.
        extra: More facts for the results (the probe's C and k).
    """

    label: str
    model: str
    pretrained: str
    head: str
    id_acc: float
    n_id: int
    shifts: dict[str, ShiftScore]
    extra: dict[str, Any] = field(default_factory=dict)


def _logits(head: Head, x: np.ndarray) -> torch.Tensor:
    w, b = head
    return torch.from_numpy(x.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64))


def score_head(head: Head, id_feats: Features, shifts: dict[str, tuple[Features, ClassMapping]],
               num_classes: int) -> tuple[float, dict[str, ShiftScore]]:
    """A head's top-1 on the whole ID set, and per shifted set ``(acc, ID acc on its classes)`` under its mask."""
    id_logits = _logits(head, id_feats.x)
    correct, n = masked_top1(id_logits, id_feats.y, identity_mapping("id", num_classes))
    scores = {}
    for name, (feats, mapping) in shifts.items():
        c, k = masked_top1(_logits(head, feats.x), feats.y, mapping)
        c_id, k_id = masked_top1(id_logits, id_feats.y, identity_mapping("id", num_classes, mapping.subset))
        if k == 0 or k_id == 0:
            raise ValueError(f"--shift {name}: no image of a scored class (shifted: {k}, in-distribution: {k_id})")
        scores[name] = ShiftScore(c / k, c_id / k_id, k, k_id)
    return correct / n, scores


def measure_model(model: EvalModel, name: str, pretrained: str, id_data: EvalDataset,
                  shifts: dict[str, tuple[EvalDataset, ClassMapping]], classnames: Sequence[str],
                  templates: Sequence[str], train_data: EvalDataset | None = None, k_shots: Sequence[int] = (),
                  batch_size: int = 64, use_cache: bool = True, cache_dir: str | Path | None = None,
                  seed: int = 0, progress: bool = False) -> list[Point]:
    """A model's points: zero-shot, and with ``train_data`` a probe on all of it and one per ``k_shots`` entry; every
    head scores the same features (each set is embedded once).

    Args:
        model: The model.
        name: Its name in the results.
        pretrained: Where its weights came from.
        id_data: The in-distribution evaluation set; labels index ``classnames``.
        shifts: Per shifted set's name, the set and its :class:`ClassMapping`.
        classnames: The in-distribution class names (for the zero-shot prompts).
        templates: Prompt templates.
        train_data: The in-distribution training split, for the probes (none when ``None``).
        k_shots: Fewer-data probes: k training images per class each (their C is the full probe's).
        batch_size: Images per batch.
        use_cache: Use the zero-shot classifier cache.
        cache_dir: Where it is (``clipforge.eval.zeroshot.default_cache_dir`` when ``None``).
        seed: Of the probes' validation split and few-shot draws.
        progress: Show progress bars.
    """
    num_classes = len(classnames)
    id_feats = extract_features(model, id_data, batch_size, progress=progress)
    shift_feats = {k: (extract_features(model, ds, batch_size, progress=progress), m) for k, (ds, m) in shifts.items()}
    weights = build_classifier(model, classnames, templates, cache_dir, use_cache, progress=progress).numpy()
    heads: list[tuple[str, str, Head, dict[str, Any]]] = [
        (f"{name}/zeroshot", "zeroshot", (weights, np.zeros(num_classes)), {})]
    if train_data is not None:
        train = extract_features(model, train_data, batch_size, progress=progress)
        if train.y.max() >= num_classes:
            raise ValueError(f"--train-data: label {int(train.y.max())} outside the {num_classes} classes")
        head, C = train_probe(train, num_classes, seed=seed, device=model.device)
        heads.append((f"{name}/probe", "linear_probe", head, {"C": C, "k_shot": None, "n_train": len(train.y)}))
        for k in k_shots:
            head_k, _ = train_probe(train, num_classes, C=C, k_shot=k, seed=seed, device=model.device)
            heads.append((f"{name}/probe-k{k}", "linear_probe", head_k, {"C": C, "k_shot": k}))
    points = []
    for label, kind, head, extra in heads:
        id_acc, scores = score_head(head, id_feats, shift_feats, num_classes)
        points.append(Point(label, name, pretrained, kind, id_acc, len(id_feats.y), scores, extra))
    return points


# --- The trend, each point's distance above it, and the plot. ---


def fit_trends(points: Sequence[Point], select: Callable[[Point], bool] | None = None,
               source: str = "the points given") -> dict[str, LinearFit]:
    """Per shifted set, the line over the selected points' ``(ID acc on its classes, shifted acc)``.

    Raises:
        ValueError: When fewer than two selected points (with different ID accuracies) are left for a set.
    """
    chosen = [p for p in points if select is None or select(p)]
    names = sorted({s for p in points for s in p.shifts})
    fits = {}
    for s in names:
        pts = [p.shifts[s] for p in chosen if s in p.shifts]
        try:
            fits[s] = fit_line([q.id_acc for q in pts], [q.acc for q in pts], source)
        except ValueError as e:
            raise ValueError(f"the trend of {s} over {source}: {e}") from None
    return fits


def robustness_table(points: Sequence[Point], fits: dict[str, LinearFit]) -> dict[str, dict[str, dict[str, float]]]:
    """``{point label: {shift: {acc, id_acc, expected, effective_robustness, logit_distance}}}``."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for p in points:
        row = {}
        for s, q in p.shifts.items():
            fit = fits[s]
            row[s] = {"acc": q.acc, "id_acc": q.id_acc, "expected": fit.predict(q.id_acc),
                      "effective_robustness": fit.effective_robustness(q.id_acc, q.acc),
                      "logit_distance": fit.logit_distance(q.id_acc, q.acc)}
        table[p.label] = row
    return table


_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)


def plot_robustness(points: Sequence[Point], fits: dict[str, LinearFit], path: str | Path, title: str = "") -> Path:
    """Shifted vs in-distribution top-1 on logit axes, one panel per shifted set: the points, the fitted line and
    ``y = x`` (no loss under the shift)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    names = sorted(fits)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 4.0 * rows))
    one_model = len({p.model for p in points}) == 1
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, s in zip(axes, names, strict=False):
        pts = [p for p in points if s in p.shifts]
        xs = np.array([p.shifts[s].id_acc for p in pts])
        ys = np.array([p.shifts[s].acc for p in pts])
        lo = float(np.clip(min(xs.min(), ys.min()) * 0.8, 0.01, 0.5))
        hi = float(np.clip(1 - (1 - max(xs.max(), ys.max())) * 0.5, 0.6, 0.995))
        grid = inv_logit(np.linspace(logit(lo), logit(hi), 100))
        fit = fits[s]
        ax.plot(grid, [fit.predict(g) for g in grid], color="tab:blue", lw=1.5, label=f"line: {fit.source}")
        ax.plot(grid, grid, color="grey", ls="--", lw=1, label="y = x")
        for p, x, y in zip(pts, xs, ys, strict=True):
            zs = p.head == "zeroshot"
            ax.scatter([x], [y], marker="*" if zs else "o", s=90 if zs else 30, c="tab:red" if zs else "tab:green",
                       zorder=3)
            # One model: name the heads alone; fewer-data probes by their k, without a figure (they crowd).
            short = p.label.rsplit("/", 1)[-1] if one_model else p.label
            text = short.replace("probe-", "") if p.extra.get("k_shot") else \
                f"{short} ({fit.effective_robustness(x, y):+.1%})"
            ax.annotate(text, (x, y), fontsize=7, xytext=(3, -9 if zs else 3), textcoords="offset points")
        ax.set_xscale("logit"), ax.set_yscale("logit")
        ticks = [t for t in _TICKS if lo <= t <= hi]
        for axis, limit in ((ax.xaxis, ax.set_xlim), (ax.yaxis, ax.set_ylim)):
            axis.set_major_locator(FixedLocator(ticks))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}" if v >= 0.01 else f"{v:.1%}"))
            axis.set_minor_locator(NullLocator())
            limit(lo, hi)
        ax.set_xlabel("in-distribution top-1 (its classes)")
        ax.set_ylabel(f"{s} top-1")
        ax.set_title(s, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
