"""Every shipped fine-tuning config (``configs/finetune_*.yaml``, ``configs/eval_sets.yaml``) loads and trains.

Each config is read with ``load_config`` as it is shipped and run for two steps from a tiny stand-in for the
quickstart model: a small tiny-rn saved as ``runs/quickstart/final`` in a scratch folder that is the working
directory, beside the data the configs name (``runs/flyp_data``, ``data/train.csv``, ``data/pets/``,
``data/flickr_test.tsv``), so relative paths resolve as in the repository. Only sizes are overridden (steps, batch,
eval sizes, warm-up, the unlocking step): a field a config misspells or a path it names that no longer matches fails
here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import clipforge
from clipforge.checkpoints.native import save_pretrained
from clipforge.models.factory import build_model
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.flyp import write_synthetic_class_folders
from clipforge.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [*sorted(p.name for p in (ROOT / "configs").glob("finetune_*.yaml")), "eval_sets.yaml"]
# tiny-rn (the quickstart's architecture: a ResNet with an attention pool) at 32 px, embeddings of 32, one text layer.
STAND_IN = ["model=tiny-rn", "model_overrides.embed_dim=32", "model_overrides.vision.image_size=32",
            "model_overrides.vision.width=8", "model_overrides.vision.heads=2", "model_overrides.text.width=32",
            "model_overrides.text.heads=2", "model_overrides.text.layers=1", "model_overrides.text.context_length=16"]
# tiny-vit likewise: no BatchNorm, so a teacher equal to the student gives equal logits (KL 0) at the first step.
VIT_STAND_IN = ["model=tiny-vit", "model_overrides.embed_dim=32", "model_overrides.vision.image_size=32",
                "model_overrides.vision.width=32", "model_overrides.vision.layers=1", "model_overrides.vision.heads=2",
                "model_overrides.text.width=32", "model_overrides.text.heads=2", "model_overrides.text.layers=1",
                "model_overrides.text.context_length=16"]
SIZES = ["steps=2", "batch_size=8", "log_every=1", "checkpoint_every=0", "plots=false", "schedule.warmup_steps=1"]
SYNTHETIC = ["data.train_size=64", "eval.size=8", "eval.retrieval_size=4"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _square(colour: tuple[int, int, int], i: int) -> Image.Image:
    image = Image.new("RGB", (36, 36), (255, 255, 255))
    image.paste(colour, (2 + i, 2 + i, 26 + i, 26 + i))
    return image


def _caption_table(path: Path, n: int) -> None:
    """A table of ``n`` coloured squares (images beside it) with captions; ``,`` or tab by the suffix."""
    sep = "\t" if path.suffix == ".tsv" else ","
    rows = [f"filepath{sep}caption"]
    for j in range(n):
        name, colour = list(COLOURS.items())[j % len(COLOURS)]
        _square(colour, j % 6).save(path.parent / f"{path.stem}_{j}.png")
        rows.append(f"{path.stem}_{j}.png{sep}a {name} square number {j}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as the configs expect: the stand-in model and every dataset they name."""
    root = tmp_path_factory.mktemp("shipped")
    torch.manual_seed(0)
    model = build_model(load_config(None, parse_overrides(STAND_IN)).model_config())
    save_pretrained(model, root / "runs/quickstart/final")
    write_synthetic_class_folders(root / "runs/flyp_data", size=12, image_size=32)
    (root / "data/pets").mkdir(parents=True)
    for name, colour in COLOURS.items():
        (root / "data/pets" / name).mkdir()
        for i in range(2):
            _square(colour, i).save(root / "data/pets" / name / f"{i}.png")
    _caption_table(root / "data/train.csv", 16)
    _caption_table(root / "data/flickr_test.tsv", 6)
    return root


@pytest.fixture(scope="module")
def vit_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny ViT as ``runs/quickstart/final``."""
    root = tmp_path_factory.mktemp("shipped_vit")
    torch.manual_seed(1)
    save_pretrained(build_model(load_config(None, parse_overrides(VIT_STAND_IN)).model_config()),
                    root / "runs/quickstart/final")
    return root


def _run(name: str, workspace: Path, out: Path, monkeypatch: pytest.MonkeyPatch, extra: Sequence[str] = ()
         ) -> tuple[Any, Any]:
    """Loads ``configs/<name>`` as shipped, shrinks it and trains it in ``workspace``; the config and the result."""
    monkeypatch.chdir(workspace)
    shipped = load_config(ROOT / "configs" / name)
    sizes = [*SIZES, *(SYNTHETIC if shipped.data.kind == "synthetic" else []), f"output_dir={out}"]
    if shipped.unlock.at_step is not None:
        sizes.append("unlock.at_step=1")  # unlock inside the two steps
    config = load_config(ROOT / "configs" / name, parse_overrides([*sizes, *extra]))
    assert config.model == "runs/quickstart/final"  # every fine-tune starts from the quickstart model
    return config, train(config, Runtime())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_trains_from_the_quickstart_model(name: str, workspace: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    config, result = _run(name, workspace, tmp_path / "run", monkeypatch)
    assert result.step == 2 and len(result.losses) == 2
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.losses)
    start = clipforge.load(workspace / "runs/quickstart/final")[0].state_dict()
    final = clipforge.load(tmp_path / "run/final")[0].state_dict()
    assert start.keys() == final.keys()
    assert any(not torch.equal(start[k], final[k]) for k in start)  # it trained
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    evaluated = {k for r in records if r["step"] == 2 for k in r}
    if config.data.kind == "synthetic" and config.eval.languages[:1] == ("ru",):  # the target and the skills kept
        assert {"zeroshot/shape", "zeroshot/shape@en", "retrieval/text_retrieval_recall@1@en"} <= evaluated
    elif config.data.kind == "synthetic":  # one language (finetune_resize: English at the new sizes)
        assert {"zeroshot/shape", "retrieval/text_retrieval_recall@1"} <= evaluated
    for named in config.eval.sets:  # each named set at the last step
        assert any(k.startswith(f"{named.name}/") for k in evaluated), (named.name, sorted(evaluated))


def test_wise_ft_config_writes_every_alpha(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           one_thread: None) -> None:
    config, result = _run("finetune_wise_ft.yaml", workspace, tmp_path / "run", monkeypatch)
    assert config.wise_ft is not None and config.wise_ft.save_best is not None
    table = json.loads((tmp_path / "run/wise_ft.json").read_text(encoding="utf-8"))
    assert [float(a) for a in table] == list(config.wise_ft.alphas) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(config.wise_ft.save_best in metrics for metrics in table.values())
    assert table["1.0"] == result.eval  # alpha 1 is the final model, evaluated as the loop evaluated it
    assert (tmp_path / "run/wise_ft.png").stat().st_size > 0
    assert (tmp_path / "run/final_wise/model.safetensors").is_file()


def test_distill_config_adds_a_distillation_term(vit_workspace: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    # The teacher is the model the run starts from; with a high rate the student moves away from it in one step.
    fast = ["optim.lr=5e-2"]
    config, distilled = _run("finetune_distill.yaml", vit_workspace, tmp_path / "distill", monkeypatch, fast)
    assert config.distill.teacher == config.model and config.distill.form == "kl"
    _, plain = _run("finetune_distill.yaml", vit_workspace, tmp_path / "plain", monkeypatch,
                    [*fast, "distill.teacher=null"])
    (_, first_d), (_, second_d) = distilled.losses
    (_, first_p), (_, second_p) = plain.losses
    # Step 1: the student is its teacher, KL 0 and no gradient from it: the plain run's loss and update.
    assert first_d == pytest.approx(first_p, abs=1e-5)
    # Step 2: the same contrastive loss plus KL(teacher || student) > 0 of the student one step away.
    assert second_d - second_p > 1e-3, (distilled.losses, plain.losses)
