"""Training from a checkpoint at another image size or text context: the checkpoint loads at its own size, then its
position grid is resized (bicubic) or its text positions stretched (Long-CLIP) before the first step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.checkpoints.native import save_pretrained
from clipforge.config import ConfigError
from clipforge.models.factory import build_model as build_fresh
from clipforge.models.resize import resize_context, resize_image_size
from clipforge.train import Runtime, load_config, parse_overrides, prepare, train
from clipforge.train.loop import build_model

RUN = ["data.train_size=200", "eval.size=4", "eval.retrieval_size=2", "schedule.warmup_steps=1", "steps=2",
       "batch_size=4", "log_every=1", "plots=false"]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A saved tiny-vit (64 px, 8-px patches: an 8 × 8 grid; 32-token context) with seeded random weights."""
    torch.manual_seed(5)
    model = build_fresh(load_config(None, parse_overrides(["model=tiny-vit"])).model_config())
    return save_pretrained(model, tmp_path / "start")


def run_config(tmp_path: Path, model: str | Path, *overrides: str):
    return load_config(None, parse_overrides([*RUN, f"model={model}", f"output_dir={tmp_path / 'run'}", *overrides]))


def test_a_64px_checkpoint_trains_at_96px_from_its_resized_grid(tmp_path: Path, checkpoint: Path,
                                                                 one_thread: None) -> None:
    config = run_config(tmp_path, checkpoint, "model_overrides.vision.image_size=96",
                        "model_overrides.vision.patch_dropout=0.25")  # another override: the loop rebuilds and loads
    prepared = prepare(config)
    assert prepared.model_config.vision.image_size == 96 and prepared.model_config.vision.patch_dropout == 0.25
    expected = resize_image_size(clipforge.load(checkpoint)[0], 96)
    model = build_model(prepared, torch.device("cpu"), config.model)  # the model of step 0
    assert model.config == prepared.model_config
    assert model.visual.pos_embed.shape == (1 + 12 * 12, 128)
    assert torch.equal(model.visual.pos_embed, expected.visual.pos_embed)
    reference = expected.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())  # nothing else changed

    result = train(config, Runtime(), prepared=prepared)
    assert result.step == 2
    final = clipforge.load(tmp_path / "run/final")[0]
    assert final.config.vision.image_size == 96
    assert not torch.equal(final.visual.pos_embed, expected.visual.pos_embed)  # trained at 96 px
    assert final.encode_image(torch.zeros(1, 3, 96, 96)).shape == (1, final.config.embed_dim)


def test_a_longer_context_stretches_the_text_positions_and_the_tokenizer_follows(tmp_path: Path, checkpoint: Path,
                                                                                  one_thread: None) -> None:
    config = run_config(tmp_path, checkpoint, "model_overrides.text.context_length=64")
    prepared = prepare(config)
    assert prepared.text_processor("a red circle").shape == (1, 64)
    expected = resize_context(clipforge.load(checkpoint)[0], 64)
    model = build_model(prepared, torch.device("cpu"), config.model)
    assert model.text.pos_embed.shape == (64, 128)
    assert torch.equal(model.text.pos_embed, expected.text.pos_embed)
    train(config, Runtime(), prepared=prepared)
    final, _, tokenizer = clipforge.load(tmp_path / "run/final")
    assert final.config.text.context_length == 64 and tokenizer("x").shape == (1, 64)


def test_a_size_off_the_patch_grid_or_a_shorter_context_is_refused_at_prepare(tmp_path: Path,
                                                                             checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match=r"model_overrides\.vision\.image_size: .*8-px patches.*try 96 or 104"):
        prepare(run_config(tmp_path, checkpoint, "model_overrides.vision.image_size=100"))
    with pytest.raises(ConfigError, match=r"model_overrides\.text\.context_length: .*≥ the model's 32"):
        prepare(run_config(tmp_path, checkpoint, "model_overrides.text.context_length=16"))


def test_released_weights_take_a_longer_context_but_no_other_text_change(tmp_path: Path, checkpoint: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("huggingface_hub")
    from helpers.hub_cache import add_directory, offline_hub

    add_directory(offline_hub(monkeypatch, tmp_path / "hf"), "test-org/tiny-vit", checkpoint)
    name = "hf-hub:test-org/tiny-vit"
    prepared = prepare(run_config(tmp_path, name, "model_overrides.text.context_length=48"))
    assert prepared.model_config.text.context_length == 48
    assert prepared.start is not None and prepared.start.text.pos_embed.shape == (48, 128)
    assert prepared.text_processor("a red circle").shape == (1, 48)
    with pytest.raises(ConfigError, match=r"model_overrides\.text: .*only text\.context_length"):
        prepare(run_config(tmp_path, name, "model_overrides.text.context_length=48", "model_overrides.text.heads=2"))
