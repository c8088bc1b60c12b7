"""WiSE-FT merging: exact at both ends, the average in the middle, clear errors for different architectures, and
the saved merge loads and computes what the merged model does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.checkpoints.merge import merge_models
from clipforge.checkpoints.native import save_pretrained
from clipforge.cli.main import main

TINY = {"embed_dim": 32, "vision": {"kind": "vit", "image_size": 32, "patch_size": 8, "width": 32, "layers": 2,
                                    "heads": 2},
        "text": {"width": 32, "heads": 2, "layers": 2, "context_length": 16}, "act": "gelu"}


def _pair(seed_a: int = 0, seed_b: int = 1, **overrides_b: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed_a)
    a = clipforge.create_model(TINY)
    torch.manual_seed(seed_b)
    b = clipforge.create_model(TINY, **overrides_b)
    with torch.no_grad():
        b.logit_scale.fill_(1.5)  # fresh models share the initial temperature: make it differ too
    return a.eval(), b.eval()


@pytest.mark.parametrize("alpha, expected", [(0.0, "a"), (1.0, "b")])
def test_merge_ends_are_exact(alpha: float, expected: str) -> None:
    a, b = _pair()
    merged = merge_models(a, b, alpha)
    reference = (a if expected == "a" else b).state_dict()
    for name, tensor in merged.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_merge_half_is_the_average_and_inputs_stay() -> None:
    a, b = _pair()
    before = {k: v.clone() for k, v in a.state_dict().items()}
    merged = merge_models(a, b, 0.5)
    sa, sb = a.state_dict(), b.state_dict()
    for name, tensor in merged.state_dict().items():
        torch.testing.assert_close(tensor, (sa[name] + sb[name]) / 2, rtol=0, atol=1e-6)
    assert torch.equal(merged.logit_scale, (a.logit_scale + b.logit_scale) / 2)
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in before.items())  # A untouched
    assert merged is not a


def test_merge_resnet_batchnorm_counters() -> None:
    cfg = {**TINY, "vision": {"kind": "resnet", "image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "heads": 2}}
    a, b = clipforge.create_model(cfg), clipforge.create_model(cfg)
    b.visual.bn1.num_batches_tracked.fill_(7)
    merged = merge_models(a, b, 0.25)
    assert merged.visual.bn1.num_batches_tracked.item() == 0  # A's counter kept
    torch.testing.assert_close(merged.visual.conv1.weight, 0.75 * a.visual.conv1.weight + 0.25 * b.visual.conv1.weight)


@pytest.mark.parametrize("overrides, message", [
    ({"vision": {"width": 64, "heads": 2}}, "vision.width"),
    ({"act": "quick_gelu"}, "'act'"),
    ({"text": {"context_length": 20}}, "text.context_length"),
])
def test_merge_different_architectures_is_a_clear_error(overrides: dict, message: str) -> None:
    a, b = _pair(**overrides)
    with pytest.raises(ValueError, match=message):
        merge_models(a, b, 0.5)


def test_merge_shape_difference_names_the_tensor() -> None:
    a, b = _pair()
    b.text.pos_embed = torch.nn.Parameter(torch.zeros(20, 32))  # a config that lies about the weights
    with pytest.raises(ValueError, match=r"'text.pos_embed' has shape \(16, 32\) in A and \(20, 32\) in B"):
        merge_models(a, b, 0.5)


def test_merge_training_only_fields_may_differ() -> None:
    a, b = _pair(vision={"patch_dropout": 0.5})
    merge_models(a, b, 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_merge_alpha_outside_unit_interval(alpha: float) -> None:
    a, b = _pair()
    with pytest.raises(ValueError, match="alpha"):
        merge_models(a, b, alpha)


def _save_pair(tmp_path: Path) -> tuple[Path, Path, torch.nn.Module, torch.nn.Module]:
    a, b = _pair()
    processor = clipforge.get_text_processor(a)
    return save_pretrained(a, tmp_path / "a", processor), save_pretrained(b, tmp_path / "b", processor), a, b


def test_merged_checkpoint_loads_with_the_merged_features(tmp_path: Path) -> None:
    from clipforge.checkpoints.merge import merge_checkpoints

    path_a, path_b, a, b = _save_pair(tmp_path)
    out = merge_checkpoints(path_a, path_b, tmp_path / "m", 0.3)
    loaded, _, processor = clipforge.load(out)
    expected = merge_models(a, b, 0.3)
    images = torch.randn(2, 3, 32, 32)
    tokens = processor(["a red square", "two blue circles"])
    assert tokens.shape == (2, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), expected.encode_image(images), rtol=0, atol=0)
        torch.testing.assert_close(loaded.encode_text(tokens), expected.encode_text(tokens), rtol=0, atol=0)
    with pytest.raises(ValueError, match="exists"):
        merge_checkpoints(path_a, path_b, out, 0.3)
    with pytest.raises(ValueError, match="overwrite an input"):
        merge_checkpoints(path_a, path_b, path_a, 0.3, overwrite=True)


def test_merge_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path_a, path_b, a, b = _save_pair(tmp_path)
    out = tmp_path / "wise"
    assert main(["merge", str(path_a), str(path_b), str(out), "--alpha", "0.5"]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = clipforge.load(out)[0]
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, (a.state_dict()[name] + b.state_dict()[name]) / 2, rtol=0, atol=1e-6)
    assert main(["merge", str(path_a), str(path_b), str(out), "--alpha", "0.5"]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["merge", str(path_a), str(path_b), str(out), "--alpha", "1", "--overwrite"]) == 0
    assert torch.equal(clipforge.load(out)[0].logit_scale, b.logit_scale)
    with pytest.raises(SystemExit):
        main(["merge", str(path_a), str(path_b), str(out), "--alpha", "2"])
    other = tmp_path / "other"
    save_pretrained(clipforge.create_model({**TINY, "embed_dim": 16}), other)
    assert main(["merge", str(path_a), str(other), str(tmp_path / "x"), "--alpha", "0.5"]) == 2
    assert "embed_dim" in capsys.readouterr().err
