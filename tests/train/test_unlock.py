"""Partial unlocking: only the last blocks of a tower train, or all of it from ``unlock.at_step`` on, resumably."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from clipforge.checkpoints.native import save_pretrained
from clipforge.config import ConfigError
from clipforge.models.factory import build_model
from clipforge.train import Runtime, load_config, parse_overrides, prepare, train
from clipforge.train.checkpoint import load_checkpoint
from clipforge.train.finetune_config import UnlockConfig
from clipforge.train.layer_groups import apply_unlock, layer_map
from helpers.tiny import tiny_vit_overrides

ARCH = tiny_vit_overrides(width=16, vision_layers=3, text_layers=2)
RUN = ["data.train_size=200", "eval.size=4", "eval.retrieval_size=0", "schedule.warmup_steps=1", "batch_size=8",
       "log_every=1", "plots=false", "optim.weight_decay=0.1"]


@pytest.fixture
def start(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A saved 'pretrained' model (3 image blocks, 2 text blocks) and its weights."""
    torch.manual_seed(5)
    model = build_model(load_config(None, parse_overrides(ARCH)).model_config())
    return save_pretrained(model, tmp_path / "pretrained"), {k: v.clone() for k, v in model.state_dict().items()}


def changed(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(after[k], before[k])}


def image_layer(name: str) -> int:
    """The layer of an image-tower parameter of ARCH's model (0 embeddings, 1..3 blocks, 4 head)."""
    return layer_map(build_model(load_config(None, parse_overrides(ARCH)).model_config()))[name].index


def config(start: Path, out: Path, *extra: str):
    return load_config(None, parse_overrides([*RUN, f"model={start}", f"output_dir={out}", *extra]))


def test_only_the_last_blocks_and_the_head_train(tmp_path: Path, start: tuple[Path, dict], one_thread: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    source, before = start
    train(config(source, tmp_path / "run", "steps=3", "unlock.image_blocks=1"), Runtime())
    printed = capsys.readouterr().err
    assert "parameter groups:" in printed and "image" in printed
    after = load_checkpoint(tmp_path / "run/checkpoints/step_00000003.pt", torch.device("cpu"))["model"]
    moved = changed(after, before)
    image = {k for k in before if k.startswith("visual.")}
    layers = {k: image_layer(k) for k in image}
    assert {k for k in image if layers[k] >= 3} <= moved  # the last block (3) and the head (4) train
    assert not moved & {k for k in image if layers[k] <= 2}  # embeddings and blocks 1, 2: bit for bit
    assert {"text.token_embed.weight", "text.transformer.blocks.0.attn.qkv.weight", "text.proj"} <= moved  # whole
    assert "logit_scale" in moved


def test_unlock_at_step_changes_the_frozen_blocks_only_from_that_step(tmp_path: Path, start: tuple[Path, dict],
                                                                      one_thread: None) -> None:
    source, before = start
    args = ["steps=4", "unlock.image_blocks=0", "unlock.text_blocks=1", "unlock.at_step=2", "checkpoint_every=1",
            "keep_checkpoints=10"]
    train(config(source, tmp_path / "a", *args), Runtime())
    states = {s: load_checkpoint(tmp_path / f"a/checkpoints/step_{s:08d}.pt", torch.device("cpu"))["model"]
              for s in (1, 2, 3, 4)}
    frozen = {"visual.pos_embed", "visual.transformer.blocks.0.attn.qkv.weight",
              "visual.transformer.blocks.2.mlp.fc.weight", "text.token_embed.weight",
              "text.transformer.blocks.0.mlp.fc.weight"}
    for step in (1, 2):  # steps 0 and 1 taken: before at_step
        assert not changed(states[step], before) & frozen
        assert {"visual.proj", "text.transformer.blocks.1.mlp.fc.weight"} <= changed(states[step], before)
    assert frozen <= changed(states[3], states[2])  # step 2 = at_step: everything trains
    assert frozen <= changed(states[4], states[3])

    # Runs resumed before at_step (across it) and after it end where the uninterrupted one does.
    for run, step in (("b", 1), ("c", 3)):
        (tmp_path / f"{run}/checkpoints").mkdir(parents=True)
        name = f"checkpoints/step_{step:08d}.pt"
        shutil.copy(tmp_path / "a" / name, tmp_path / run / name)
        resumed = train(config(source, tmp_path / run, *args), Runtime(), resume="latest")
        assert resumed.step == 4
        final = load_checkpoint(tmp_path / f"{run}/checkpoints/step_00000004.pt", torch.device("cpu"))["model"]
        assert all(torch.equal(final[k], states[4][k]) for k in states[4]), run


def test_frozen_blocks_get_no_gradient_and_eval_mode() -> None:
    model = build_model(load_config(None, parse_overrides(["model=tiny-rn"])).model_config()).train()
    may_train = {n for n, _ in model.named_parameters()}
    apply_unlock(model, UnlockConfig(image_blocks=1), 0, may_train)
    params = dict(model.named_parameters())
    assert not params["visual.layer3.0.conv1.weight"].requires_grad and not model.visual.layer3.training
    assert not model.visual.bn1.training  # fixed BatchNorm statistics in the frozen stem
    assert params["visual.layer4.0.conv1.weight"].requires_grad and model.visual.layer4.training
    assert params["text.token_embed.weight"].requires_grad and model.text.training
    apply_unlock(model, UnlockConfig(image_blocks=1, at_step=5), 5, may_train)  # a pure function of the step
    assert all(p.requires_grad for p in model.parameters()) and model.visual.layer3.training


def test_bad_unlock_settings_are_clear_errors(tmp_path: Path, start: tuple[Path, dict]) -> None:
    source, _ = start
    with pytest.raises(ConfigError, match="unlock.at_step"):
        config(source, tmp_path / "r", "steps=4", "unlock.at_step=2")  # nothing to unlock
    with pytest.raises(ConfigError, match="unlock.at_step=4"):
        config(source, tmp_path / "r", "steps=4", "unlock.image_blocks=1", "unlock.at_step=4")
    with pytest.raises(ConfigError, match="unlock.image_blocks"):
        config(source, tmp_path / "r", "unlock.image_blocks=-1")
    cfg = config(source, tmp_path / "r", "steps=2", "unlock.image_blocks=5")
    with pytest.raises(ConfigError, match="image tower has 3 blocks"):
        train(cfg, Runtime(), prepared=prepare(cfg))
    cfg = config(source, tmp_path / "r", "steps=2", "unlock.image_blocks=1", "lock=image")
    with pytest.raises(ConfigError, match="lock=image"):
        train(cfg, Runtime(), prepared=prepare(cfg))
