"""Cross-entropy fine-tuning with a zero-shot-initialised head (``classifier:``; clipforge.train.classify): the head
starts as the scaled zero-shot classifier, only the image tower and the head train, the run resumes exactly, its
final/ holds the head beside an ordinary model, and ``eval.sets`` and the WiSE-FT sweep score with the head."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import clipforge
from clipforge.checkpoints.native import save_pretrained
from clipforge.config import ConfigError
from clipforge.eval import EvalModel
from clipforge.eval.tasks import open_task_data
from clipforge.eval.zeroshot import build_classifier, evaluate_zeroshot
from clipforge.models.factory import build_model
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.classify import ClassifierHead, load_classifier, zero_shot_head
from helpers.tiny import tiny_vit_overrides

ARCH = tiny_vit_overrides()
COLOURS = {"dark_red": (200, 20, 20), "green": (30, 200, 40), "blue": (30, 40, 220)}
TEMPLATES = ["a photo of a {}.", "a {} square."]


def _folder(root: Path, per_class: int = 6) -> Path:
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = Image.new("RGB", (32, 32), (255, 255, 255))
            image.paste(colour, (2 + i, 3, 20 + i, 24))
            image.save(root / name / f"{i}.png")
    return root


@pytest.fixture
def start(tmp_path: Path) -> Path:
    torch.manual_seed(5)
    return save_pretrained(build_model(load_config(None, parse_overrides(ARCH)).model_config()), tmp_path / "start")


def _config(tmp_path: Path, model: Path, *extra: str, run: str = "run"):
    folder = tmp_path / "data" if (tmp_path / "data").is_dir() else _folder(tmp_path / "data")
    return load_config(None, parse_overrides([
        f"model={model}", "data.kind=folder", f"data.path={folder}", "data.layout=classes", "data.augment=false",
        "data.num_workers=0", f"classifier.templates={json.dumps(TEMPLATES)}", "schedule.warmup_steps=1",
        "steps=4", "batch_size=6", "log_every=1", "plots=false", "optim.lr=1e-3", f"output_dir={tmp_path / run}",
        *extra]))


def test_the_head_starts_as_the_scaled_zero_shot_classifier(start: Path, one_thread: None) -> None:
    model, eval_tf, tokenizer = clipforge.load(start)
    names = [n.replace("_", " ") for n in sorted(COLOURS)]
    head = zero_shot_head(model, names, TEMPLATES, eval_tf, tokenizer, torch.device("cpu"))
    zs = build_classifier(EvalModel(model, eval_tf, tokenizer, torch.device("cpu")), names, TEMPLATES,
                          use_cache=False)  # (D, C): what clipforge eval scores with
    torch.testing.assert_close(head.weight, model.scale().detach() * zs.T, rtol=0, atol=1e-6)
    features = torch.randn(5, 32)
    expected = model.scale().detach() * torch.nn.functional.normalize(features, dim=-1) @ zs
    torch.testing.assert_close(head(features), expected, rtol=1e-6, atol=1e-6)
    zeros = zero_shot_head(model, names, TEMPLATES, eval_tf, tokenizer, torch.device("cpu"), init="zeros")
    assert zeros.weight.shape == (3, 32) and not zeros.weight.any()


def test_only_the_image_tower_and_the_head_train_and_final_holds_both(tmp_path: Path, start: Path,
                                                                      one_thread: None) -> None:
    result = train(_config(tmp_path, start), Runtime())
    assert [s for s, _ in result.losses] == [1, 2, 3, 4] and all(math.isfinite(v) for _, v in result.losses)
    base = clipforge.load(start)[0].state_dict()
    final_dir = tmp_path / "run" / "final"
    tuned = clipforge.load(final_dir)[0].state_dict()  # an ordinary model directory: no head keys in it
    assert set(tuned) == set(base)
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith("visual.") for k in changed)  # text tower and logit scale untouched
    _, head, classnames, _, _ = load_classifier(final_dir)
    assert classnames == ["blue", "dark red", "green"]  # the folders' order, underscores as spaces
    info = json.loads((final_dir / "classifier" / "classifier.json").read_text())
    assert info["num_classes"] == 3 and info["width"] == 32
    start_model, start_tf, start_tok = clipforge.load(start)
    initial = zero_shot_head(start_model, classnames, TEMPLATES, start_tf, start_tok, torch.device("cpu"))
    assert not torch.equal(head.weight, initial.weight)  # the head trained too


def test_a_zeros_head_starts_at_log_classes(tmp_path: Path, start: Path, one_thread: None) -> None:
    result = train(_config(tmp_path, start, "classifier.init=zeros", "steps=1"), Runtime())
    assert result.losses[0][1] == pytest.approx(math.log(3), abs=1e-6)


def test_lock_image_trains_the_head_alone(tmp_path: Path, start: Path, one_thread: None) -> None:
    train(_config(tmp_path, start, "lock=image", "steps=2"), Runtime())
    base = clipforge.load(start)[0].state_dict()
    model, head, *_ = load_classifier(tmp_path / "run" / "final")
    assert all(torch.equal(base[k], v) for k, v in model.state_dict().items())
    start_model, start_tf, tok = clipforge.load(start)
    initial = zero_shot_head(start_model, ["blue", "dark red", "green"], TEMPLATES, start_tf, tok,
                             torch.device("cpu"))
    assert not torch.equal(head.weight, initial.weight)


@pytest.mark.filterwarnings("ignore:.*missing; resuming from step_00000002.pt")
def test_resumed_from_a_checkpoint_it_ends_where_an_uninterrupted_run_does(tmp_path: Path, start: Path,
                                                                          one_thread: None) -> None:
    train(_config(tmp_path, start, "checkpoint_every=2", "keep_checkpoints=3", run="full"), Runtime())
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for late in ("checkpoints/step_00000004.pt", "final"):  # as if killed after the step-2 checkpoint
        path = tmp_path / "cut" / late
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    resumed = train(_config(tmp_path, start, "checkpoint_every=2", "keep_checkpoints=3", run="cut"), Runtime(),
                    resume="latest")
    assert resumed.step == 4
    full = load_classifier(tmp_path / "full" / "final")
    cut = load_classifier(tmp_path / "cut" / "final")
    assert torch.equal(full[1].weight, cut[1].weight)
    for (k, a), b in zip(full[0].state_dict().items(), cut[0].state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_eval_sets_score_with_the_head_and_the_sweep_starts_at_zero_shot(tmp_path: Path, start: Path,
                                                                         one_thread: None) -> None:
    data = str(_folder(tmp_path / "test", per_class=3))
    sets = json.dumps([{"name": "ce", "task": "zeroshot", "data": data, "head": True, "every": 2,
                        "templates": None},
                       {"name": "zs", "task": "zeroshot", "data": data, "every": 2}])
    config = _config(tmp_path, start, f"eval.sets={sets}", "wise_ft.alphas=[0.0, 1.0]")
    result = train(config, Runtime())
    model, head, classnames, eval_tf, tokenizer = load_classifier(tmp_path / "run" / "final")
    dataset = open_task_data(data, "zeroshot")
    scorer = EvalModel(model, eval_tf, tokenizer, torch.device("cpu"))
    own = evaluate_zeroshot(scorer, dataset, classnames, ["{}"], use_cache=False, weights=head.weight.T).metrics
    assert result.eval["ce/acc1"] == pytest.approx(own["acc1"])  # the head's predictions, not the prompts'
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "ce/acc1" in r] == [2, 4]
    table = json.loads((tmp_path / "run" / "wise_ft.json").read_text())
    # α = 0 is the start model with the zero-shot head: it scores as the prompts' classifier does
    assert table["0.0"]["ce/acc1"] == table["0.0"]["zs/acc1"]
    assert table["1.0"]["ce/acc1"] == result.eval["ce/acc1"]


def test_bad_classifier_configs_are_clear_errors(tmp_path: Path, start: Path) -> None:
    with pytest.raises(ConfigError, match="classifier: cross-entropy fine-tuning needs class labels"):
        load_config(None, parse_overrides(["classifier.templates=imagenet"]))
    with pytest.raises(ConfigError, match="two recipes"):
        _config(tmp_path, start, 'data.captions_from_labels.templates=["a {}"]')
    with pytest.raises(ConfigError, match="does not combine with lora"):
        _config(tmp_path, start, "lora.rank=4")
    with pytest.raises(ConfigError, match="does not combine with distill.teacher"):
        _config(tmp_path, start, f"distill.teacher={start}")
    with pytest.raises(ConfigError, match=r"eval.sets \(x\): head scores class labels"):
        _config(tmp_path, start, 'eval.sets=[{"name": "x", "task": "retrieval", "data": "d", "head": true}]')
    with pytest.raises(ConfigError, match="label_smoothing"):
        _config(tmp_path, start, "classifier.label_smoothing=1.5")


def test_head_sets_without_a_head_or_with_other_classes_are_clear_errors(tmp_path: Path, start: Path,
                                                                         one_thread: None) -> None:
    data = tmp_path / "two"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(data / name / "0.png")
    sets = json.dumps([{"name": "ce", "task": "zeroshot", "data": str(data), "head": True}])
    with pytest.raises(ConfigError, match=r"eval.sets\[0\].head: ce has 2 classes, the run's classifier head 3"):
        train(_config(tmp_path, start, f"eval.sets={sets}", "steps=1"), Runtime())
    plain = load_config(None, parse_overrides([*ARCH, "model=tiny-vit", "steps=1", "batch_size=4", "eval.every=0",
                                               "schedule.warmup_steps=0", f"eval.sets={sets}",
                                               f"output_dir={tmp_path / 'plain'}"]))
    with pytest.raises(ConfigError, match="this run trains no classifier head"):
        train(plain, Runtime())


def test_load_classifier_refuses_a_plain_model_dir(start: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no classifier.safetensors"):
        load_classifier(start)
    assert ClassifierHead(torch.ones(2, 4)).num_classes == 2


def test_clipforge_eval_scores_with_the_head(tmp_path: Path, start: Path, one_thread: None, capsys) -> None:
    from clipforge.cli.main import main

    data = str(_folder(tmp_path / "test", per_class=3))
    sets = json.dumps([{"name": "ce", "task": "zeroshot", "data": data, "head": True}])
    result = train(_config(tmp_path, start, f"eval.sets={sets}", "steps=2"), Runtime())
    final = tmp_path / "run" / "final"
    out = tmp_path / "ce.json"
    assert main(["eval", "zeroshot", "--model", str(final), "--head", str(final), "--data", data, "--output",
                 str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["metrics"]["acc1"] == pytest.approx(result.eval["ce/acc1"])
    other = tmp_path / "other"
    for name in ("x", "y", "z"):
        (other / name).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(other / name / "0.png")
    capsys.readouterr()
    assert main(["eval", "zeroshot", "--model", str(final), "--head", str(final), "--data", str(other)]) == 2
    assert "--head: the class folders of" in capsys.readouterr().err
    assert main(["eval", "zeroshot", "--model", str(final), "--head", str(start), "--data", data]) == 2
    err = capsys.readouterr().err
    assert "--head: " in err and "no classifier.safetensors" in err
