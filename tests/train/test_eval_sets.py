"""Evaluations on real data during training (``eval.sets``): named metrics at their steps, equal to ``clipforge.eval``
run on the saved final model; bad data is a ``ConfigError`` naming the field before any step; the plot is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

import clipforge
from clipforge.config import ConfigError
from clipforge.eval import EvalModel, evaluate_retrieval, evaluate_zeroshot, load_templates, open_dataset
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.metrics import read_metrics

TINY = ["model_overrides.embed_dim=32", "model_overrides.vision.image_size=32", "model_overrides.vision.patch_size=8",
        "model_overrides.vision.width=32", "model_overrides.vision.layers=1", "model_overrides.vision.heads=2",
        "model_overrides.text.width=32", "model_overrides.text.heads=2", "model_overrides.text.layers=1",
        "model_overrides.text.context_length=16", "data.train_size=200", "eval.size=10", "eval.retrieval_size=4",
        "schedule.warmup_steps=1", "log_every=1", "batch_size=8", "steps=4", "eval.every=2"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _square(colour: tuple[int, int, int], i: int) -> Image.Image:
    image = Image.new("RGB", (40, 40), (255, 255, 255))
    image.paste(colour, (4 + i, 4 + i, 30 + i, 30 + i))
    return image


def _data(root: Path) -> tuple[Path, Path]:
    """A folder of three colour classes (3 images each) and a TSV of 6 captioned images."""
    folder = root / "colours"
    for name, colour in COLOURS.items():
        (folder / name).mkdir(parents=True)
        for i in range(3):
            _square(colour, i).save(folder / name / f"{i}.png")
    rows = ["filepath\tcaption"]
    for j, (name, colour) in enumerate(list(COLOURS.items()) * 2):
        _square(colour, j).save(root / f"r{j}.png")
        rows.append(f"r{j}.png\ta {name} square number {j}")
    table = root / "captions.tsv"
    table.write_text("\n".join(rows) + "\n")
    return folder, table


def _config(tmp_path: Path, sets: list[dict]):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"eval": {"sets": sets}}))
    return load_config(path, parse_overrides([*TINY, f"output_dir={tmp_path / 'run'}"]))


def test_named_metrics_at_their_steps_equal_clipforge_eval_on_the_final_model(tmp_path, one_thread):
    folder, table = _data(tmp_path)
    config = _config(tmp_path, [
        {"name": "colours", "task": "zeroshot", "data": str(folder), "templates": "cifar10"},
        {"name": "caps", "task": "retrieval", "data": str(table), "every": 3, "recall_k": [1, 2]},
    ])
    result = train(config, Runtime())
    records = read_metrics(result.run_dir / "metrics.jsonl")
    steps_of = {key: [r["step"] for r in records if key in r]
                for key in ("colours/acc1", "colours/mean_per_class_recall", "caps/image_retrieval_recall@1",
                            "caps/text_retrieval_recall@2")}
    assert steps_of["colours/acc1"] == [2, 4] and steps_of["colours/mean_per_class_recall"] == [2, 4]
    assert steps_of["caps/image_retrieval_recall@1"] == [3, 4] and steps_of["caps/text_retrieval_recall@2"] == [3, 4]
    assert not any("colours/acc5" in r for r in records)  # three classes: no top-5, as clipforge eval reports None
    assert any("zeroshot/shape" in r for r in records)  # the synthetic world's evaluation still runs beside them

    # Known answer: clipforge.eval's functions on the saved final model give the last logged values.
    model, transform, processor = clipforge.load(result.run_dir / "final")
    scorer = EvalModel(model, transform, processor, "cpu")
    last = {k: v for r in records if r["step"] == 4 for k, v in r.items()}
    zs = evaluate_zeroshot(scorer, open_dataset(folder), sorted(COLOURS),
                           load_templates("cifar10"), use_cache=False).metrics
    rt = evaluate_retrieval(scorer, open_dataset(table, task="retrieval"), ks=(1, 2)).metrics
    for key, value in zs.items():
        if value is not None:
            assert last[f"colours/{key}"] == pytest.approx(value, abs=1e-6)
    for key, value in rt.items():
        assert last[f"caps/{key}"] == pytest.approx(value, abs=1e-6)
    assert result.eval["colours/acc1"] == last["colours/acc1"]

    plot = result.run_dir / "eval_sets.png"
    assert plot.is_file() and Image.open(plot).size[0] > 100


def test_bad_data_is_a_config_error_naming_the_field_before_any_step(tmp_path, one_thread):
    folder, table = _data(tmp_path)
    config = _config(tmp_path, [{"name": "pets", "task": "zeroshot", "data": str(tmp_path / "missing")}])
    with pytest.raises(ConfigError, match=r"eval\.sets\[0\]\.data: .*missing"):
        train(config, Runtime())
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained, nothing written

    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")  # two names for three class folders
    config = _config(tmp_path, [{"name": "caps", "task": "retrieval", "data": str(table)},
                                {"name": "pets", "task": "zeroshot", "data": str(folder), "classnames": str(names)}])
    with pytest.raises(ConfigError, match=r"eval\.sets\[1\]\.classnames: 2 class names given but .* has 3"):
        train(config, Runtime())
    config = _config(tmp_path, [{"name": "f", "task": "retrieval", "data": str(folder)}])  # no captions in a folder
    with pytest.raises(ConfigError, match=r"eval\.sets\[0\]\.data: .*retrieval needs captions"):
        train(config, Runtime())


def test_set_config_is_validated_on_load(tmp_path):
    with pytest.raises(ConfigError, match="unique"):
        _config(tmp_path, [{"name": "a", "task": "retrieval", "data": "x.tsv"}] * 2)
    with pytest.raises(ConfigError, match="zeroshot"):
        _config(tmp_path, [{"name": "zeroshot", "task": "zeroshot", "data": "x"}])
    with pytest.raises(ConfigError, match=r"sets\[0\]\.task"):
        _config(tmp_path, [{"name": "a", "task": "probe", "data": "x"}])
    config = _config(tmp_path, [{"name": "a", "task": "zeroshot", "data": "x", "classnames": "cifar10"}])
    assert config.eval.sets[0].every is None and config.eval.sets[0].templates is None
