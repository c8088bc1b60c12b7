"""big_vision CLIPPO checkpoints: parity with timm's own big_vision loader, round trips, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import clipforge
from clipforge.checkpoints.big_vision import (
    BigVisionFormatError,
    is_big_vision_npz,
    load_big_vision,
    save_big_vision,
)

WIDTH, HEADS, LAYERS, PATCH, IMAGE, MLP, EMBED = 64, 4, 2, 8, 32, 256, 48


def random_big_vision_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A one-tower CLIPPO parameter tree in big_vision's flattened layout, random values."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.normal(0, 0.1, shape).astype(np.float32)
    ln = lambda: (1 + r(WIDTH), r(WIDTH))
    hd = WIDTH // HEADS
    a: dict[str, np.ndarray] = {
        "params/img/embedding/kernel": r(PATCH, PATCH, 3, WIDTH),
        "params/img/embedding/bias": r(WIDTH),
        "params/img/pos_embedding": r(1, (IMAGE // PATCH) ** 2, WIDTH),
        "params/img/head/kernel": r(WIDTH, EMBED),
        "params/img/head/bias": r(EMBED),
        "params/img/MAPHead_0/probe": r(1, 1, WIDTH),
        "params/t": np.array(np.log(10.0), dtype=np.float32),
    }
    a["params/img/Transformer/encoder_norm/scale"], a["params/img/Transformer/encoder_norm/bias"] = ln()

    def mha(prefix: str) -> None:
        for name in ("query", "key", "value"):
            a[f"{prefix}{name}/kernel"], a[f"{prefix}{name}/bias"] = r(WIDTH, HEADS, hd), r(HEADS, hd)
        a[f"{prefix}out/kernel"], a[f"{prefix}out/bias"] = r(HEADS, hd, WIDTH), r(WIDTH)

    def mlp(prefix: str) -> None:
        a[f"{prefix}Dense_0/kernel"], a[f"{prefix}Dense_0/bias"] = r(WIDTH, MLP), r(MLP)
        a[f"{prefix}Dense_1/kernel"], a[f"{prefix}Dense_1/bias"] = r(MLP, WIDTH), r(WIDTH)

    for i in range(LAYERS):
        block = f"params/img/Transformer/encoderblock_{i}/"
        for ln_name in ("LayerNorm_0", "LayerNorm_1"):
            a[f"{block}{ln_name}/scale"], a[f"{block}{ln_name}/bias"] = ln()
        mha(block + "MultiHeadDotProductAttention_0/")
        mlp(block + "MlpBlock_0/")
    head = "params/img/MAPHead_0/"
    mha(head + "MultiHeadDotProductAttention_0/")
    a[f"{head}LayerNorm_0/scale"], a[f"{head}LayerNorm_0/bias"] = ln()
    mlp(head + "MlpBlock_0/")
    return a


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    path = tmp_path / "clippo.npz"
    np.savez(path, **random_big_vision_arrays())
    return path


def test_image_features_match_timm_big_vision_loader(npz: Path) -> None:
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    reference = timm_vit.VisionTransformer(
        img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=LAYERS, num_heads=HEADS, mlp_ratio=MLP / WIDTH,
        class_token=False, global_pool="map", num_classes=EMBED, act_layer="gelu_tanh",
    ).eval()
    timm_vit._load_weights(reference, str(npz))  # timm's own big_vision .npz reader

    config, state = load_big_vision(npz)
    model = clipforge.create_model(config).eval()
    model.load_state_dict(state)
    assert config.vision.pool == "map" and not config.vision.class_token and config.embed_dim == EMBED
    assert abs(model.scale().item() - 10.0) < 1e-5

    images = torch.randn(3, 3, IMAGE, IMAGE)
    with torch.no_grad():
        ours, theirs = model.encode_image(images), reference(images)
    assert ours.shape == theirs.shape == (3, EMBED)
    assert (ours - theirs).abs().max() <= 1e-5


def test_round_trip_is_exact(npz: Path, tmp_path: Path) -> None:
    config, state = load_big_vision(npz)
    model = clipforge.create_model(config)
    model.load_state_dict(state)
    out = tmp_path / "again.npz"
    save_big_vision(model, out)
    assert is_big_vision_npz(out)
    original, written = np.load(npz), np.load(out)
    assert sorted(original.files) == sorted(written.files)
    for key in original.files:
        np.testing.assert_array_equal(original[key], written[key], err_msg=key)


def test_renderer_text_goes_through_the_same_tower(npz: Path) -> None:
    config, state = load_big_vision(npz)
    model = clipforge.create_model(config).eval()
    model.load_state_dict(state)
    pixels = torch.randint(0, 256, (2, 3, IMAGE, IMAGE), dtype=torch.uint8)
    with torch.no_grad():
        as_text = model.encode_text(pixels)
        as_image = model.encode_image(pixels.float() / 127.5 - 1)  # big_vision's value_range(-1, 1)
    assert torch.allclose(as_text, as_image, atol=1e-5)


def test_bad_files_get_clear_errors(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(BigVisionFormatError, match=r"corrupt.npz: not a readable .npz"):
        load_big_vision(corrupt)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_big_vision(tmp_path / "missing.npz")
    arrays = random_big_vision_arrays()
    del arrays["params/img/head/kernel"]
    partial = tmp_path / "partial.npz"
    np.savez(partial, **arrays)
    with pytest.raises(BigVisionFormatError, match="head/kernel"):
        load_big_vision(partial)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    assert not is_big_vision_npz(other)
    with pytest.raises(BigVisionFormatError, match="no big_vision ViT"):
        load_big_vision(other)
