"""The train config: strict validation before any work, dotted overrides, YAML files in configs/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clipforge.config import ConfigError, parse_overrides
from clipforge.train import prepare
from clipforge.train.config import TrainConfig, config_to_dict, load_config, save_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_overrides_are_typed_and_nested():
    config = load_config(None, parse_overrides(["optim.lr=1e-3", "steps=200", "lock=image", "optim.grad_clip=null",
                                                "model_overrides.vision.layers=2", "data.languages=[en, ru]"]))
    assert config.optim.lr == 1e-3 and config.steps == 200 and config.lock == "image"
    assert config.optim.grad_clip is None
    assert config.model_config().vision.layers == 2
    assert config.data.languages == ("en", "ru")


@pytest.mark.parametrize(("overrides", "message"), [
    (["optim.lrr=1"], "unknown field 'lrr' (did you mean 'lr'?)"),
    (["stepz=3"], "unknown field 'stepz'"),
    (["steps=abc"], "config.steps: expected an integer"),
    (["optim.lr=fast"], "config.optim.lr: expected a number"),
    (["lock=both"], "config.lock: expected one of"),
    (["data.kind=csv", "data.path=/no/such/file.csv"], "data.path: no such file"),
    (["data.kind=csv"], "data.path: a csv data source needs a path"),
    (["data.kind=tar"], "config.data.kind: expected one of"),
    (["data.kind=shards"], "data.urls: no shard source given"),
    (["model=tiny-vt"], "unknown model 'tiny-vt'"),
    (["model=tiny-vt"], "did you mean tiny-vit"),
    (["model_overrides.vision.widht=64"], "unknown field 'widht'"),
    (["batch_size=10", "accum_steps=3"], "not divisible by accum_steps"),
    (["loss=siglip"], "needs a model with a logit bias"),
    (["schedule.warmup_steps=5000", "steps=10"], "exceeds steps"),
    (["steps"], "not of the form key=value"),
    (["eval.languages=[en, de]"], "eval.languages: expected a non-empty list of"),
    (["optim.logit_scale_lr_mult=0"], "logit_scale_lr_mult must be positive"),
    (["data.contrast_group=9"], "data.contrast_group must be in 1..8"),
    (["lora.rank=0"], "lora.rank must be an integer >= 1"),  # an optional section's own message, not "matches none"
])
def test_bad_configs_fail_with_a_clear_message(overrides, message):
    """Each mistake is caught by building the config or by ``prepare``, the one step that reads files, before any
    work starts."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        prepare(load_config(None, parse_overrides(overrides)))


def test_configs_are_data_built_without_touching_files(tmp_path):
    """A config naming files that do not exist can be built, saved and compared; ``prepare`` then names the
    fault. A checkpoint start is read by ``prepare`` alone."""
    config = load_config(None, parse_overrides(["data.kind=csv", f"data.path={tmp_path / 'pairs.csv'}",
                                                f"model={tmp_path / 'ckpt'}"]))
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    with pytest.raises(ConfigError, match="data.path: no such file"):
        prepare(config)


def test_world_size_must_divide_the_batch():
    config = load_config(None, {"batch_size": 12, "accum_steps": 2})
    config.check_world_size(3)
    with pytest.raises(ConfigError, match="world_size"):
        config.check_world_size(4)


def test_saved_config_round_trips(tmp_path):
    config = load_config(None, parse_overrides(["optim.lr=2e-4", "model_overrides.text.layers=1"]))
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert config_to_dict(config)["optim"]["betas"] == [0.9, 0.98]


def test_csv_source_with_an_existing_file(tmp_path):
    (tmp_path / "pairs.csv").write_text("filepath,caption\na.png,a red circle\n")
    config = load_config(None, {"data.kind": "csv", "data.path": str(tmp_path / "pairs.csv")})
    assert config.data.kind == "csv"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_states_its_command(path):
    header = path.read_text().split("\n\n")[0]
    assert "clipforge " in header or "torchrun" in header
    if "clipforge vqa" in header:  # a VQA fine-tuning config, read by its own loader
        from clipforge.vqa.train import load_vqa_config

        assert load_vqa_config(path, {}).model
    else:
        assert isinstance(load_config(path), TrainConfig)
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_results_table_has_one_column_per_language():
    from clipforge.cli.train import results_table

    table = results_table({"zeroshot/shape": 0.5, "retrieval/image_retrieval_recall@1": 0.25, "loss": 1.0,
                           "zeroshot/shape@ru": 0.375, "retrieval/image_retrieval_recall@1@ru": 0.125}, "en")
    lines = [line.split() for line in table.splitlines()]
    assert lines[0][-2:] == ["en", "ru"]
    assert ["shape", "50.0%", "37.5%"] in lines
    assert ["caption", "→", "image", "R@1", "25.0%", "12.5%"] in lines


def test_malformed_yaml_is_a_config_error_naming_the_file(tmp_path, capsys):
    from clipforge.cli.main import main

    path = tmp_path / "broken.yaml"
    path.write_text("steps: [1, 2\nmodel: tiny-rn\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(path)
    assert main(["train", "--config", str(path)]) == 2
    assert "broken.yaml: not valid YAML" in capsys.readouterr().err
