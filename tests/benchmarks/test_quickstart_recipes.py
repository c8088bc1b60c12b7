"""``benchmarks/quickstart_recipes.py``: the two rows it trains (the quickstart, and it plus exactly the shipped
small-data recipe), the scores it reads back, its memo, and one short run of each row end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("benchmarks/quickstart_recipes.py", "quickstart_recipes")


def test_the_recipe_row_is_the_quickstart_plus_the_shipped_recipe_and_nothing_else(bench: ModuleType) -> None:
    rows = bench.row_configs()
    shipped = yaml.safe_load((ROOT / "configs/small_data.yaml").read_text())
    quickstart = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
    assert rows["plain"] == quickstart
    added = {k: v for k, v in rows["recipe"].items() if rows["plain"].get(k) != v}
    expected = {k: shipped[k] for k in bench.RECIPE_KEYS if shipped.get(k) is not None}
    if set(expected.get("augment", {})) <= bench.TRANSPARENT_ONLY:  # a no-op on opaque scenes: left out
        expected.pop("augment", None)
    expected["optim"] = {**quickstart["optim"], "lr": shipped["optim"]["lr"]}  # the recipe's lr; the rest stays
    expected["batch_size"] = shipped["batch_size"]  # the recipe's batch, at the quickstart's number of samples
    expected["steps"] = quickstart["steps"] * quickstart["batch_size"] // shipped["batch_size"]
    assert added == expected
    assert {"slip", "declip", "label_smoothing", "optim", "batch_size"} <= set(added)  # the shipped recipe today
    assert rows["recipe"]["steps"] * rows["recipe"]["batch_size"] == quickstart["steps"] * quickstart["batch_size"]
    short = bench.row_configs(steps=50)
    assert short["plain"]["steps"] == 50 and short["plain"]["eval"]["every"] == 0
    assert short["recipe"]["steps"] * short["recipe"]["batch_size"] == 50 * quickstart["batch_size"]


def test_a_batch_that_does_not_divide_the_samples_is_an_error(bench: ModuleType) -> None:
    with pytest.raises(ValueError, match="batch_size 96 does not divide the budget of 3200 samples"):
        bench.row_configs(steps=50, recipe_overrides=["batch_size=96"])
    assert bench.row_configs(steps=50, recipe_overrides=["batch_size=64"])["recipe"]["steps"] == 50


def test_an_augment_for_transparent_images_alone_is_left_out_on_the_opaque_quickstart(
        bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = bench.recipe_keys()
    monkeypatch.setattr(bench, "recipe_keys", lambda: {**shipped, "augment": {"stroke": 0.5, "stroke_radius": 2}})
    assert "augment" not in bench.row_configs()["recipe"] or bench.row_configs()["recipe"]["augment"] is None
    monkeypatch.setattr(bench, "recipe_keys", lambda: {**shipped, "augment": {"stroke": 0.5, "flip": 0.5}})
    assert bench.row_configs()["recipe"]["augment"] == {"stroke": 0.5, "flip": 0.5}  # a flip would act: kept


def test_an_ablation_changes_the_recipe_row_alone(bench: ModuleType) -> None:
    shipped, ablated = bench.row_configs(), bench.row_configs(recipe_overrides=["declip.nn_weight=0", "slip=null"])
    assert ablated["plain"] == shipped["plain"]
    assert ablated["recipe"]["declip"] == {**shipped["recipe"]["declip"], "nn_weight": 0}
    assert ablated["recipe"]["slip"] is None
    assert {k: v for k, v in ablated["recipe"].items() if k not in ("declip", "slip")} == \
        {k: v for k, v in shipped["recipe"].items() if k not in ("declip", "slip")}


def test_a_config_without_a_recipe_is_an_error_naming_it(bench: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("model: tiny-rn\nsteps: 10\n")
    with pytest.raises(ValueError, match="plain.yaml: none of augment"):
        bench.recipe_keys(path)


def test_final_scores_are_the_last_evaluation(bench: ModuleType, tmp_path: Path) -> None:
    records = [{"step": 10, "loss": 2.0}, {"step": 20, "zeroshot/shape": 0.5, "retrieval/x": 0.1},
               {"step": 30, "loss": 1.0}, {"step": 40, "zeroshot/shape": 0.75, "retrieval/x": 0.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert bench.final_scores(tmp_path) == {"zeroshot/shape": 0.75, "retrieval/x": 0.2}
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    with pytest.raises(RuntimeError, match="no zeroshot/ or retrieval/ scores"):
        bench.final_scores(tmp_path)


def test_a_run_is_trained_once_per_config(bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained = []

    def fake_run(command: list[str], log: Path) -> None:  # stands for `clipforge train --config train.yaml`
        config = yaml.safe_load(Path(command[command.index("--config") + 1]).read_text())
        trained.append(config["seed"])
        (Path(config["output_dir"]) / "metrics.jsonl").write_text(json.dumps({"zeroshot/shape": 0.5}) + "\n")

    monkeypatch.setattr(bench.compare, "run", fake_run)
    config = bench.row_configs()["plain"]
    first = bench.train_run(config, tmp_path / "run", seed=0, threads=1)
    assert bench.train_run(config, tmp_path / "run", seed=0, threads=1) == first and trained == [0]
    assert first["zeroshot/shape"] == 0.5
    bench.train_run(config, tmp_path / "run", seed=1, threads=1)  # another config in the same folder: trained
    assert trained == [0, 1]


@pytest.mark.slow
def test_both_rows_train_and_a_finished_run_is_read_back(bench: ModuleType, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--work", str(tmp_path), "--seeds", "0", "--steps", "32", "--threads", "1"]
    assert bench.main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert set(first["results"]) == {"plain", "recipe"} and first["steps"]["plain"] == 32
    assert first["steps"]["recipe"] * first["batch_size"]["recipe"] == 32 * first["batch_size"]["plain"]
    for row in ("plain", "recipe"):
        scores = first["results"][row][0]
        assert 0.0 <= scores["zeroshot/shape"] <= 1.0 and scores["train_s"] > 0
    assert set(first["summary"]["recipe"]["ratio_to_plain"]) >= {"zeroshot/shape", "zeroshot/colour"}
    log = (tmp_path / "recipe-seed0" / "train.log").stat().st_mtime_ns
    assert bench.main(argv) == 0  # the memo: the same configs are not trained again
    assert json.loads(capsys.readouterr().out)["results"] == first["results"]
    assert (tmp_path / "recipe-seed0" / "train.log").stat().st_mtime_ns == log
