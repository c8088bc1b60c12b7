"""``benchmarks/icons/by_style.py``: per-style top-1 of finished runs, on a small CLIP_benchmark folder whose
images carry their set and style, against clipforge's own zero-shot evaluator on the same model."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

from clipforge.api import create_model, get_text_processor
from clipforge.checkpoints.native import save_pretrained
from clipforge.eval.datasets import open_dataset
from clipforge.eval.loading import load_eval_model
from clipforge.eval.zeroshot import evaluate_zeroshot
from helpers.icons import RN, STYLES, write_folder
from helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
@pytest.fixture(scope="module")
def by_style() -> ModuleType:
    return load_script("benchmarks/icons/by_style.py", "icons_by_style")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("icons")
    data, work = root / "data", root / "work"
    for name in ("cross_style_zeroshot", "unseen_concepts_zeroshot"):
        write_folder(data / "64px" / "eval" / name)
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("tiny-rn", **RN)
        save_pretrained(model, work / "row" / f"seed{seed}" / "final", get_text_processor(model))
    return data, work


def test_per_style_scores_split_the_evaluators_top1(by_style: ModuleType, layout: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture) -> None:
    data, work = layout
    by_style.main(["--data", str(data), "--work", str(work), "--rows", "row", "missing", "--seeds", "0", "1", "2"])
    report = json.loads(capsys.readouterr().out)
    folder = data / "64px" / "eval" / "cross_style_zeroshot"
    table = report["protocols"]["cross_style"]
    assert table["row"]["seeds"] == [0, 1] and table["missing"]["seeds"] == []  # seed 2 and row "missing": no runs
    styles = table["row"]["styles"]
    assert {s: styles[s]["images"] for s in styles} == {"all": 18, "ph:duotone": 9, "tabler:filled": 9}
    for i, seed in enumerate((0, 1)):
        model, _, _ = load_eval_model(str(work / "row" / f"seed{seed}" / "final"), device="cpu")
        dataset = open_dataset(folder)
        expected = evaluate_zeroshot(model, dataset, dataset.classes, dataset.templates, use_cache=False)
        assert styles["all"]["per_seed"][i] == pytest.approx(100 * expected.metrics["acc1"], abs=0.006)
        split = sum(styles[s]["per_seed"][i] * styles[s]["images"] for s in STYLES) / 18
        assert split == pytest.approx(styles["all"]["per_seed"][i], abs=0.01)


def test_an_image_without_its_style_is_named(by_style: ModuleType, tmp_path: Path) -> None:
    write_folder(tmp_path / "eval", json_for=False)
    hits = {("0.tar", "00000000"): True, ("1.tar", "00000001"): False}
    with pytest.raises(KeyError, match="0.tar: sample 00000000 has no .json"):
        by_style.by_style(hits, by_style.styles_of(tmp_path / "eval"))
