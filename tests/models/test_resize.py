"""Resizing a trained model's inputs: the image position grid (bicubic, as timm) and the text context (Long-CLIP's
stretch). The original size with the original positions gives the original features; the first positions stay."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.checkpoints.native import save_pretrained
from clipforge.cli.main import main
from clipforge.models.resize import resize_context, resize_grid, resize_image_size, stretch_positions

TEXT = {"width": 32, "heads": 2, "layers": 2, "context_length": 32}
VIT = {"embed_dim": 32, "vision": {"kind": "vit", "image_size": 32, "patch_size": 8, "width": 32, "layers": 2,
                                   "heads": 2},
       "text": TEXT, "act": "gelu"}
MAP = {**VIT, "vision": {**VIT["vision"], "pool": "map", "class_token": False, "ln_pre": False}}
RESNET = {**VIT, "vision": {"kind": "resnet", "image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "heads": 2}}
SIGLIP = {"family": "siglip", "embed_dim": 32, "tokenizer": {"kind": "bpe"},
          "vision": {**MAP["vision"], "patch_bias": True, "proj": False},
          "text": {**TEXT, "causal": False, "pool": "last", "proj_bias": True}}


def _model(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return clipforge.create_model(config).eval()


@pytest.mark.parametrize("config", [VIT, MAP, RESNET], ids=["cls", "map", "resnet"])
def test_same_size_is_the_identity(config: dict) -> None:
    model = _model(config)
    before = copy.deepcopy(model.state_dict())
    resize_image_size(model, config["vision"]["image_size"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_grid_matches_timm() -> None:
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    for prefix in (0, 1):
        pos = torch.randn(prefix + 7 * 7, 24)
        for new in (5, 12):
            ours = resize_grid(pos, prefix, 7, new)
            theirs = resample_abs_pos_embed(pos[None], [new, new], num_prefix_tokens=prefix)[0]
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_grid_round_trip_is_close() -> None:
    # A smooth grid (what a trained one is, roughly): up 2× and back down reproduces it closely.
    y, x = torch.meshgrid(torch.linspace(0, 1, 8), torch.linspace(0, 1, 8), indexing="ij")
    grid = torch.stack([torch.sin(3 * x + k) * torch.cos(2 * y - k) for k in range(16)], -1).reshape(64, 16)
    pos = torch.cat([torch.randn(1, 16), grid])
    back = resize_grid(resize_grid(pos, 1, 8, 16), 1, 16, 8)
    assert torch.equal(back[0], pos[0])  # the class token's position is kept
    err = (back[1:] - pos[1:]).abs().max().item()
    assert err < 0.05, err


@pytest.mark.parametrize("config, prefix", [(VIT, 1), (MAP, 0), (RESNET, 1)], ids=["cls", "map", "resnet"])
def test_resized_model_runs_and_restores(config: dict, prefix: int) -> None:
    model = _model(config)
    size = config["vision"]["image_size"]
    tower = model.visual if config["vision"]["kind"] == "vit" else model.visual.attn_pool
    original_pos, original_config = tower.pos_embed.detach().clone(), model.config
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model.encode_image(images)
    resize_image_size(model, size * 3 // 2 if config["vision"]["kind"] == "vit" else size + 32)
    new_size = model.config.vision.image_size
    assert model.visual.config.image_size == new_size
    grid = new_size // (8 if config["vision"]["kind"] == "vit" else 32)
    assert tower.pos_embed.shape == (prefix + grid**2, original_pos.shape[1]) and tower.pos_embed.requires_grad
    torch.testing.assert_close(tower.pos_embed[:prefix], original_pos[:prefix], rtol=0, atol=0)
    with torch.no_grad():
        assert model.encode_image(torch.randn(2, 3, new_size, new_size)).shape == (2, 32)
        tower.pos_embed = torch.nn.Parameter(original_pos)  # every other weight is untouched
        model.config, model.visual.config = original_config, original_config.vision
        torch.testing.assert_close(model.encode_image(images), expected, rtol=0, atol=0)


def test_bad_sizes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"not a whole number of 8-px patches \(patch_size=8\): try 48 or 56"):
        resize_image_size(_model(VIT), 50)
    with pytest.raises(ValueError, match="multiple of 32"):
        resize_image_size(_model(RESNET), 80)
    naflex = {**SIGLIP, "vision": {**SIGLIP["vision"], "naflex": True, "max_num_patches": 16}}
    with pytest.raises(ValueError, match="max_num_patches"):
        resize_image_size(_model(naflex), 64)


def test_clippo_renderer_follows_the_image_size() -> None:
    model = clipforge.create_model("clippo-tiny")
    resize_image_size(model, 128)
    assert model.config.render["image_size"] == 128
    pixels = clipforge.get_text_processor(model)(["a long caption"])
    assert pixels.shape == (1, 3, 128, 128)
    with torch.no_grad():
        assert model.encode_text(pixels).shape == (1, 128)


def _long_clip(pos: torch.Tensor, keep: int = 20) -> torch.Tensor:
    """Long-CLIP's loop (train/train.py of beichenzbc/Long-CLIP), for any old length, 4× stretch."""
    length, width = pos.shape
    res = torch.zeros(4 * length - 3 * keep, width)
    res[:keep] = pos[:keep]
    for i in range(length - 1 - keep):
        for k in range(4):
            res[4 * i + k + keep] = (4 - k) * pos[i + keep] / 4 + k * pos[i + 1 + keep] / 4
    for k in range(4):
        res[4 * length - 3 * keep - 4 + k] = pos[length - 1] + k * (pos[length - 1] - pos[length - 2]) / 4
    return res


def test_stretch_equals_long_clip() -> None:
    pos = torch.randn(77, 16)
    torch.testing.assert_close(stretch_positions(pos, 248, 20), _long_clip(pos), rtol=0, atol=1e-6)
    aligned = stretch_positions(pos, 248, 20, align_end=True)
    assert torch.equal(aligned[:20], pos[:20]) and torch.allclose(aligned[-1], pos[-1], atol=1e-6)


def test_short_captions_keep_their_features_causal() -> None:
    model = _model(VIT)
    processor = clipforge.get_text_processor(model)
    captions = ["a red square", "two small blue circles on the left"]
    tokens = processor(captions)
    assert (tokens > 0).sum(1).max() <= 20
    with torch.no_grad():
        before = model.encode_text(tokens)
    first = model.text.pos_embed[:20].detach().clone()
    resize_context(model, 80)
    assert model.text.pos_embed.shape == (80, 32) and torch.equal(model.text.pos_embed[:20], first)
    long_tokens = clipforge.get_text_processor(model)(captions)
    assert long_tokens.shape == (2, 80) and torch.equal(long_tokens[:, :32], tokens)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(long_tokens), before, rtol=0, atol=1e-5)
        assert model.encode_text(processor(["word " * 60])).shape == (1, 32)


def test_siglip_context_keeps_the_pooled_position() -> None:
    model = _model(SIGLIP)
    last = model.text.pos_embed[-1].detach().clone()
    resize_context(model, 64)
    torch.testing.assert_close(model.text.pos_embed[-1], last, rtol=0, atol=1e-6)
    tokens = clipforge.get_text_processor(model)(["a caption"])
    assert tokens.shape == (1, 64)
    with torch.no_grad():
        assert model.encode_text(tokens).shape == (1, 32)


def test_bad_contexts_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="≥ the model's 32"):
        resize_context(_model(VIT), 16)
    with pytest.raises(ValueError, match="keep=31"):
        resize_context(_model(VIT), 64, keep=31)
    with pytest.raises(ValueError, match="CLIPPO renders"):
        resize_context(clipforge.create_model("clippo-tiny"), 64)


def test_convert_cli_resizes_and_the_saved_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(VIT)
    src = save_pretrained(model, tmp_path / "src", clipforge.get_text_processor(model))
    dst = tmp_path / "dst"
    assert main(["convert", str(src), str(dst), "--to", "clipforge", "--image-size", "48",
                 "--context-length", "64"]) == 0, capsys.readouterr().err
    loaded, transform, processor = clipforge.load(dst)
    assert loaded.config.vision.image_size == 48 and loaded.config.text.context_length == 64
    assert processor(["a red square"]).shape == (1, 64)
    from PIL import Image

    assert transform(Image.new("RGB", (100, 80))).shape == (3, 48, 48)
    expected = resize_context(resize_image_size(copy.deepcopy(model), 48), 64)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected.state_dict()[name]), name
    assert main(["convert", str(src), str(tmp_path / "bad"), "--to", "clipforge", "--image-size", "50"]) == 2
    assert "patch_size=8" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "bad"), "--to", "clipforge", "--context-length", "40000"]) == 2
    assert "longer than the tokenizer can fill" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "oc.safetensors"), "--to", "open_clip",
                 "--image-size", "64"]) == 0, capsys.readouterr().err
    assert clipforge.load(tmp_path / "oc.safetensors", act="gelu")[0].config.vision.image_size == 64
