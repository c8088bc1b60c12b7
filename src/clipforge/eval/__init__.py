"""Evaluation: zero-shot classification, image–text retrieval, linear probes; datasets and result files.

Everything takes an :class:`EvalModel` (a model with its image transform and text processor), so CLIP
and CLIPPO evaluate the same way::

    model, eval_tf, processor = clipforge.load("runs/x/final")
    m = EvalModel(model, eval_tf, processor)
    ds = open_dataset("data/cifar10_wds")
    result = evaluate_zeroshot(m, ds, ds.classes, ds.templates or load_templates("cifar10"))
"""

from clipforge.eval.adapter import EvalModel, model_fingerprint
from clipforge.eval.datasets import CsvDataset, ImageFolder, Sample, WdsBenchmark, open_dataset
from clipforge.eval.linear_probe import Features, extract_features, fit_logreg_sklearn, fit_logreg_torch, linear_probe
from clipforge.eval.prompts import load_classnames, load_templates
from clipforge.eval.results import result_record, write_results
from clipforge.eval.retrieval import chunked_topk, evaluate_retrieval, retrieval_metrics, retrieval_ranks
from clipforge.eval.zeroshot import build_classifier, classification_metrics, evaluate_zeroshot, plot_confusion

__all__ = [
    "CsvDataset",
    "EvalModel",
    "Features",
    "ImageFolder",
    "Sample",
    "WdsBenchmark",
    "build_classifier",
    "chunked_topk",
    "classification_metrics",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "extract_features",
    "fit_logreg_sklearn",
    "fit_logreg_torch",
    "linear_probe",
    "load_classnames",
    "load_templates",
    "model_fingerprint",
    "open_dataset",
    "plot_confusion",
    "result_record",
    "retrieval_metrics",
    "retrieval_ranks",
    "write_results",
]
