"""Training from a checkpoint: a clipforge directory or a foreign file starts the run; LiT keeps the locked tower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipforge.checkpoints import CheckpointError
from clipforge.checkpoints.native import save_pretrained
from clipforge.checkpoints.open_clip import save_open_clip
from clipforge.config import ConfigError
from clipforge.models.factory import build_model
from clipforge.train import Runtime, load_config, parse_overrides, prepare, train
from helpers.tiny import tiny_vit_overrides

ARCH = tiny_vit_overrides()
RUN = ["data.train_size=500", "eval.size=10", "eval.retrieval_size=4", "schedule.warmup_steps=1", "steps=2",
       "batch_size=8", "log_every=1", "plots=false"]


def pretrained(tmp_path: Path) -> torch.nn.Module:
    """A small 'pretrained' CLIP: the architecture of ARCH with seeded random weights."""
    torch.manual_seed(3)
    return build_model(load_config(None, parse_overrides(ARCH)).model_config())


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "final/model.safetensors")


@pytest.mark.parametrize("fmt", ["clipforge", "open_clip"])
def test_lit_from_a_checkpoint_keeps_its_image_tower_and_trains_the_text_tower(tmp_path: Path, fmt: str,
                                                                                one_thread: None) -> None:
    model = pretrained(tmp_path)
    if fmt == "clipforge":
        source = save_pretrained(model, tmp_path / "pretrained")
    else:
        source = save_open_clip(model, tmp_path / "pretrained_open_clip")  # + open_clip_config.json: heads, act
    config = load_config(None, parse_overrides([*RUN, f"model={source}", "lock=image",
                                                f"output_dir={tmp_path / 'run'}"]))
    assert prepare(config).model_config == model.config
    train(config, Runtime())
    after, before = final_state(tmp_path / "run"), model.state_dict()
    image = [k for k in before if k.startswith("visual.")]
    text = [k for k in before if k.startswith(("transformer.", "token_embed", "text."))]
    assert image and text
    assert all(torch.equal(after[k], before[k]) for k in image)  # locked: the checkpoint's weights, bit for bit
    assert any(not torch.equal(after[k], before[k]) for k in text)  # trained


def test_overrides_that_keep_shapes_apply_and_others_are_clear_errors(tmp_path: Path, one_thread: None) -> None:
    source = save_pretrained(pretrained(tmp_path), tmp_path / "pretrained")
    config = load_config(None, parse_overrides([*RUN, f"model={source}", "model_overrides.vision.patch_dropout=0.5",
                                                f"output_dir={tmp_path / 'run'}"]))
    assert prepare(config).model_config.vision.patch_dropout == 0.5
    train(config, Runtime())
    wider = load_config(None, parse_overrides([*RUN, f"model={source}", "model_overrides.vision.width=64",
                                               f"output_dir={tmp_path / 'wide'}"]))
    with pytest.raises(CheckpointError, match="pretrained"):
        train(wider, Runtime())


def test_an_unreadable_checkpoint_fails_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="model: .*broken"):
        prepare(load_config(None, parse_overrides([*RUN, f"model={tmp_path / 'broken'}"])))


def test_the_starting_checkpoint_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              one_thread: None) -> None:
    """``prepare`` reads the checkpoint; the run trains from what it read instead of opening it again."""
    import clipforge.checkpoints as checkpoints

    source = save_pretrained(pretrained(tmp_path), tmp_path / "pretrained")
    reads = []
    real = checkpoints.load_any
    monkeypatch.setattr(checkpoints, "load_any", lambda *a, **k: (reads.append(a[0]), real(*a, **k))[1])
    train(load_config(None, parse_overrides([*RUN, f"model={source}", f"output_dir={tmp_path / 'run'}"])), Runtime())
    assert reads == [str(source)]
