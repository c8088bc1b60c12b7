"""The WiSE-FT sweep at the end of a fine-tune: α = 0 is the starting checkpoint, α = 1 the final model, each
evaluated with the run's own evaluations; a table and a plot, and a model only when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.checkpoints.native import save_pretrained
from clipforge.config import ConfigError
from clipforge.data.synthetic import SyntheticWorld
from clipforge.models.factory import build_model
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.data import world_config
from clipforge.train.evaluate import build_eval_sets, evaluate_languages
from clipforge.train.wise_ft import WiseFTConfig, best_alpha
from clipforge.transforms import model_transforms
from helpers.tiny import tiny_vit_overrides

ARCH = tiny_vit_overrides()
RUN = ["data.train_size=300", "eval.size=12", "eval.retrieval_size=6", "schedule.warmup_steps=1", "steps=3",
       "batch_size=8", "log_every=1", "plots=false", "optim.lr=5e-3"]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(11)
    return save_pretrained(build_model(load_config(None, parse_overrides(ARCH)).model_config()), tmp_path / "start")


def run_evaluations(model: torch.nn.Module, config, text_processor) -> dict[str, float]:
    """The run's evaluations, rebuilt independently of the loop: the synthetic world's held-out tasks."""
    _, eval_tf = model_transforms(model.config)
    world = SyntheticWorld(world_config(config.data, model.config.vision.image_size))
    e = config.eval
    sets = build_eval_sets(world, eval_tf, e.size, e.retrieval_size, e.languages, e.split)
    return evaluate_languages(model, sets, text_processor, torch.device("cpu"))


def test_the_sweep_ends_are_the_start_checkpoint_and_the_final_model(tmp_path: Path, checkpoint: Path,
                                                                      one_thread: None) -> None:
    config = load_config(None, parse_overrides([*RUN, f"model={checkpoint}", f"output_dir={tmp_path / 'run'}",
                                                "wise_ft.alphas=[0.0, 0.5, 1.0]"]))
    result = train(config, Runtime())
    run = tmp_path / "run"
    table = json.loads((run / "wise_ft.json").read_text())
    assert list(table) == ["0.0", "0.5", "1.0"]
    start, _, tokenizer = clipforge.load(checkpoint)
    final, _, _ = clipforge.load(run / "final")
    assert any(not torch.equal(a, b) for a, b in zip(start.state_dict().values(), final.state_dict().values()))
    assert table["0.0"] == run_evaluations(start, config, tokenizer)  # exact: merge_models is exact at the ends
    assert table["1.0"] == run_evaluations(final, config, tokenizer)
    assert table["1.0"] == result.eval  # the loop's own last evaluation of the final model
    assert set(table["0.5"]) == set(table["0.0"]) and "zeroshot/shape" in table["0.5"]
    assert (run / "wise_ft.png").stat().st_size > 0
    assert not (run / "final_wise").exists()  # nothing else saved by default


def test_save_best_writes_the_best_alphas_model(tmp_path: Path, checkpoint: Path, one_thread: None) -> None:
    config = load_config(None, parse_overrides([*RUN, f"model={checkpoint}", f"output_dir={tmp_path / 'run'}",
                                                "wise_ft.alphas=[0.0, 1.0]", "wise_ft.save_best=zeroshot/shape",
                                                "steps=1"]))
    train(config, Runtime())
    table = json.loads((tmp_path / "run/wise_ft.json").read_text())
    alpha = best_alpha({float(a): m for a, m in table.items()}, "zeroshot/shape")
    saved = clipforge.load(tmp_path / "run/final_wise")[0].state_dict()
    end = clipforge.load(checkpoint if alpha == 0.0 else tmp_path / "run/final")[0].state_dict()
    assert all(torch.equal(saved[k], end[k]) for k in end)


def test_best_alpha_picks_the_highest_and_names_missing_metrics() -> None:
    results = {0.0: {"a": 0.2}, 0.5: {"a": 0.7}, 1.0: {"a": 0.7}}
    assert best_alpha(results, "a") == 0.5
    with pytest.raises(ValueError, match="'b'.*\\['a'\\]"):
        best_alpha(results, "b")


def test_the_option_is_refused_for_a_preset_and_bad_alphas(checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="wise_ft: .*preset"):
        load_config(None, parse_overrides(["model=tiny-vit", "wise_ft.alphas=[0.5]"]))
    with pytest.raises(ConfigError, match="wise_ft.alphas"):
        load_config(None, parse_overrides([f"model={checkpoint}", "wise_ft.alphas=[0.5, 1.5]"]))
    with pytest.raises(ConfigError, match="wise_ft.alphas"):
        WiseFTConfig(alphas=(0.5, 0.5))
    assert load_config(None, parse_overrides([f"model={checkpoint}", "wise_ft.alphas=[0, 1]"])).wise_ft is not None
