"""SigLIP 2 NaFlex: the preprocessing, the position resize and the masked tower, against transformers' own code
(``models/siglip2``: ``Siglip2ImageProcessor``, ``resize_positional_embeddings``) and against known answers."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipforge
from clipforge.config import ConfigError
from clipforge.eval.adapter import EvalModel
from clipforge.eval.datasets import Sample, iter_batches
from clipforge.models.config import SigLIPConfig, TextConfig, ViTConfig
from clipforge.models.layers import Attention, MAPHead
from clipforge.models.naflex import (
    NaFlexBatch,
    conv_weight_as_linear,
    from_images,
    linear_weight_as_conv,
    patchify,
    resize_positions,
    target_size,
)
from clipforge.models.siglip import SigLIP
from clipforge.models.size import parameter_count
from clipforge.transforms import NaFlexTrainTransform, NaFlexTransform, model_transforms

P, BUDGET = 8, 32  # patch side, patch budget; the positions are a 4 × 4 grid (image_size 32)
SIZES = {"tall": (40, 300), "wide": (300, 40), "square": (64, 64), "tiny": (5, 7), "exact": (32, 32),
         "large": (640, 480), "one_row": (1000, 9), "odd": (33, 71)}  # (width, height)


def naflex_config(pool: str = "map", budget: int = BUDGET) -> SigLIPConfig:
    vision = ViTConfig(image_size=32, patch_size=P, width=64, layers=2, heads=4, mlp_ratio=2.0, pool=pool,  # type: ignore[arg-type]
                       class_token=False, ln_pre=False, patch_bias=True, proj=False, naflex=True,
                       max_num_patches=budget)
    text = TextConfig(vocab_size=100, context_length=16, width=64, layers=2, heads=4, mlp_ratio=2.0, causal=False,
                      pool="last", proj_bias=True)
    return SigLIPConfig(embed_dim=64, vision=vision, text=text, tokenizer={"kind": "bpe"})


def image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Noise on a smooth gradient: both the worst case for resize rounding and a picture with structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], -1)
    pixels = 0.5 * smooth + 0.5 * rng.integers(0, 256, (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(scope="module")
def model() -> SigLIP:
    torch.manual_seed(0)
    m = SigLIP(naflex_config()).eval()
    with torch.no_grad():  # the fresh position grid is small; make positions matter
        m.visual.pos_embed.normal_()
    return m


def test_target_size_equals_transformers() -> None:
    reference = pytest.importorskip("transformers.models.siglip2.image_processing_siglip2")
    rng = np.random.default_rng(0)
    cases = [(h, w, p, n) for (w, h) in SIZES.values() for p, n in ((8, 32), (16, 256), (14, 1024))]
    cases += [(int(h), int(w), int(p), int(n)) for h, w, p, n in zip(rng.integers(1, 4000, 200),
              rng.integers(1, 4000, 200), rng.choice([8, 14, 16], 200), rng.integers(1, 2000, 200))]
    for h, w, p, n in cases:
        assert target_size(h, w, p, n) == reference.get_image_size_for_max_num_patches(h, w, p, n), (h, w, p, n)


def test_patchify_equals_transformers_and_a_conv_weight_applies_to_patches_exactly() -> None:
    reference = pytest.importorskip("transformers.models.siglip2.image_processing_siglip2")
    x = torch.randn(3, 24, 40)
    assert torch.equal(patchify(x, P), reference.convert_image_to_patches(x, P))
    conv = torch.nn.Conv2d(3, 64, P, stride=P)
    batch = torch.randn(2, 3, 24, 40)
    expected = conv(batch).flatten(2).transpose(1, 2)  # (B, h·w, width): the fixed-resolution path
    got = F.linear(patchify(batch, P), conv_weight_as_linear(conv.weight), conv.bias)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(linear_weight_as_conv(conv_weight_as_linear(conv.weight), P), conv.weight)


@pytest.mark.parametrize("grid", [4, 16])
def test_resize_positions_equals_antialiased_interpolate_and_transformers(grid: int) -> None:
    modeling = pytest.importorskip("transformers.models.siglip2.modeling_siglip2")
    torch.manual_seed(0)
    pos = torch.randn(grid * grid, 8)
    shapes = torch.tensor([[1, 1], [2, 15], [15, 2], [4, 4], [16, 16], [3, 7], [grid, grid], [1, 30], [5, 6]])
    length = 32 if grid == 4 else 256
    shapes = shapes[shapes.prod(-1) <= length]
    got = resize_positions(pos, shapes, length)
    hf = modeling.Siglip2VisionEmbeddings.resize_positional_embeddings(pos.view(grid, grid, 8), shapes, length)
    square = pos.view(grid, grid, 8).permute(2, 0, 1)[None]  # (1, C, G, G)
    for i, (h, w) in enumerate(shapes.tolist()):
        expected = F.interpolate(square, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(got[i, :h * w], expected[0].flatten(1).T, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got[i, :h * w], hf[i, :h * w], atol=1e-6, rtol=1e-5)
        assert not got[i, h * w:].any()  # padding gets zeros
    assert torch.equal(resize_positions(pos, torch.tensor([[grid, grid]]), grid * grid)[0], pos)  # identity


@pytest.mark.parametrize("name", list(SIZES))
def test_transform_equals_siglip2_image_processor(name: str) -> None:
    processing = pytest.importorskip("transformers.models.siglip2.image_processing_siglip2")
    processor = processing.Siglip2ImageProcessor(patch_size=P, max_num_patches=BUDGET)
    img = image(*SIZES[name])
    hf = processor(images=[img], return_tensors="pt")
    ours = NaFlexTransform(P, BUDGET, (0.5,) * 3, (0.5,) * 3)(img)
    assert ours.patches.shape == (BUDGET, 3 * P * P) and ours.mask.dtype == torch.bool
    torch.testing.assert_close(ours.patches, hf["pixel_values"][0], atol=1e-6, rtol=0)
    assert torch.equal(ours.mask, hf["pixel_attention_mask"][0].bool())
    assert ours.spatial_shapes.tolist() == hf["spatial_shapes"][0].tolist()
    h, w = ours.spatial_shapes.tolist()
    assert h * w <= BUDGET and int(ours.mask.sum()) == h * w


def test_transform_converts_other_modes_and_other_normalisations_like_transformers() -> None:
    processing = pytest.importorskip("transformers.models.siglip2.image_processing_siglip2")
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    processor = processing.Siglip2ImageProcessor(patch_size=P, max_num_patches=BUDGET, image_mean=list(mean),
                                                 image_std=list(std), do_convert_rgb=True)
    gray = image(50, 90).convert("L")
    hf = processor(images=[gray], return_tensors="pt")
    ours = NaFlexTransform(P, BUDGET, mean, std)(gray)
    torch.testing.assert_close(ours.patches, hf["pixel_values"][0], atol=1e-6, rtol=0)


def test_model_transforms_follow_the_config_and_batches_stack_slice_and_move() -> None:
    config = naflex_config()
    train_tf, eval_tf = model_transforms(config)
    assert isinstance(eval_tf, NaFlexTransform) and isinstance(train_tf, NaFlexTrainTransform)
    assert (eval_tf.patch_size, eval_tf.max_num_patches, eval_tf.mean) == (P, BUDGET, config.mean)
    items = [eval_tf(image(*SIZES[n])) for n in ("tall", "wide", "tiny")]
    batch = torch.stack(items)
    assert isinstance(batch, NaFlexBatch) and len(batch) == 3 and batch.patches.shape == (3, BUDGET, 3 * P * P)
    assert batch.spatial_shapes.tolist() == [i.spatial_shapes.tolist() for i in items]
    joined = torch.cat([batch[:1], batch[1:]])
    assert torch.equal(joined.patches, batch.patches) and torch.equal(joined.mask, batch.mask)
    moved = batch.to("cpu", torch.float64, non_blocking=True)
    assert moved.patches.dtype == torch.float64 and moved.mask.dtype == torch.bool
    crop = train_tf(image(200, 100), rng=random.Random(0))
    assert crop.patches.shape == (BUDGET, 3 * P * P) and int(crop.mask.sum()) == int(crop.spatial_shapes.prod())
    with pytest.raises(ValueError, match="different lengths"):
        torch.stack([items[0], NaFlexTransform(P, 16, (0.5,) * 3, (0.5,) * 3)(image(20, 20))])


def test_padding_never_reaches_the_real_patches(model: SigLIP) -> None:
    """Changing or permuting the padded patches leaves every feature unchanged, and an image alone without any
    padding gets the features it gets padded in a batch."""
    tf = NaFlexTransform(P, BUDGET, (0.5,) * 3, (0.5,) * 3)
    batch = torch.stack([tf(image(*SIZES[n], seed=i)) for i, n in enumerate(("tall", "wide", "tiny", "square"))])
    with torch.no_grad():
        base = model.encode_image(batch)
        noisy = batch.patches.clone()
        noisy[~batch.mask] = torch.randn(int((~batch.mask).sum()), 3 * P * P) * 100
        changed = model.encode_image(NaFlexBatch(noisy, batch.mask, batch.spatial_shapes))
        torch.testing.assert_close(changed, base, atol=1e-5, rtol=1e-5)
        for i in range(len(batch)):
            n = int(batch.mask[i].sum())
            order = torch.cat([torch.arange(n), n + torch.randperm(BUDGET - n)])  # padding shuffled
            one = batch[i:i + 1]
            shuffled = NaFlexBatch(noisy[i:i + 1, order], one.mask, one.spatial_shapes)
            torch.testing.assert_close(model.encode_image(shuffled), base[i:i + 1], atol=1e-5, rtol=1e-5)
            alone = NaFlexBatch(one.patches[:, :n], one.mask[:, :n], one.spatial_shapes)  # no padding at all
            torch.testing.assert_close(model.encode_image(alone), base[i:i + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(base[0], base[1])  # and the images do differ


def test_plain_images_are_one_full_grid_batch_and_the_native_grid_equals_the_fixed_resolution_tower(
        model: SigLIP) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 24, 40)  # a 3 × 5 grid: 15 patches
    with torch.no_grad():
        plain = model.encode_image(x)
        batch = from_images(x, P)
        padded = NaFlexBatch(F.pad(batch.patches, (0, 0, 0, BUDGET - 15)), F.pad(batch.mask, (0, BUDGET - 15)),
                             batch.spatial_shapes)
        torch.testing.assert_close(model.encode_image(padded), plain, atol=1e-5, rtol=1e-5)
        # At the position grid's own size (4 × 4 patches) the positions are not resized: the tower is the
        # fixed-resolution SigLIP tower with the same weights.
        fixed = SigLIP(dataclasses.replace(model.config, vision=dataclasses.replace(model.config.vision,
                                                                                     naflex=False))).eval()
        fixed.load_state_dict(model.state_dict())
        square = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(model.encode_image(square), fixed.encode_image(square), atol=1e-5, rtol=1e-5)


def test_over_the_budget_is_one_clear_error(model: SigLIP) -> None:
    with pytest.raises(ValueError, match=r"images \(1, 3, 48, 48\) make a 6×6 patch grid \(36 patches\).*"
                       r"max_num_patches=32"):
        model.encode_image(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"40 patches per image.*max_num_patches=32"):
        model.encode_image(NaFlexBatch(torch.randn(1, 40, 192), torch.ones(1, 40, dtype=torch.bool),
                                       torch.tensor([[5, 8]])))
    with pytest.raises(ValueError, match=r"image 1 has a 3×11 patch grid \(33 patches\).*max_num_patches=32"):
        model.encode_image(NaFlexBatch(torch.randn(2, 32, 192), torch.ones(2, 32, dtype=torch.bool),
                                       torch.tensor([[4, 8], [3, 11]])))
    with pytest.raises(ValueError, match=r"spatial shape 2×3 needs 6 real patches.*the mask has 32"):
        model.encode_image(NaFlexBatch(torch.randn(1, 32, 192), torch.ones(1, 32, dtype=torch.bool),
                                       torch.tensor([[2, 3]])))
    with pytest.raises(ValueError, match=r"3·8·8=192"):
        model.encode_image(NaFlexBatch(torch.randn(1, 32, 100), torch.ones(1, 32), torch.tensor([[4, 8]])))
    fixed = clipforge.create_model("siglip-tiny")
    with pytest.raises(ValueError, match="needs a NaFlex image tower"):
        fixed.encode_image(from_images(torch.randn(1, 3, 64, 64), 8))


def test_config_refuses_what_naflex_cannot_do_and_presets_count_like_transformers() -> None:
    for bad in ({"class_token": True, "pool": "cls"}, {"class_token": True}, {"stem": "conv"},
                {"patch_dropout": 0.5}):
        with pytest.raises(ConfigError, match="naflex=True needs"):
            ViTConfig(patch_size=16, naflex=True, **{"pool": "map", "class_token": False, **bad})
    with pytest.raises(ConfigError, match="max_num_patches"):
        ViTConfig(naflex=True, pool="map", class_token=False, max_num_patches=0)
    transformers = pytest.importorskip("transformers")
    for name in ("SigLIP2-B/16-naflex", "SigLIP2-So400m/16-naflex"):
        with torch.device("meta"):
            ours = clipforge.create_model(name)
            v, t = ours.config.vision, ours.config.text
            reference = transformers.Siglip2Model(transformers.Siglip2Config(
                text_config={"vocab_size": t.vocab_size, "hidden_size": t.width, "num_hidden_layers": t.layers,
                             "num_attention_heads": t.heads, "intermediate_size": int(t.width * t.mlp_ratio),
                             "max_position_embeddings": t.context_length},
                vision_config={"hidden_size": v.width, "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
                               "intermediate_size": int(v.width * v.mlp_ratio), "patch_size": 16,
                               "num_patches": 256}))
        assert (v.naflex, v.max_num_patches, v.grid_size, t.vocab_size) == (True, 256, 16, 256000)
        n = sum(p.numel() for p in reference.parameters())
        assert sum(p.numel() for p in ours.parameters()) == parameter_count(ours.config) == n


def test_mean_pooling_tower_trains_and_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = SigLIP(naflex_config(pool="mean"))
    tf = NaFlexTransform(P, BUDGET, (0.5,) * 3, (0.5,) * 3)
    batch = torch.stack([tf(image(*SIZES[n])) for n in ("tall", "tiny")])
    model.set_grad_checkpointing(True)
    out = model(batch, torch.randint(0, 100, (2, 16)))
    logits = out.logit_scale * out.image_features @ out.text_features.T + out.logit_bias
    F.logsigmoid(logits).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():  # mean pooling counts the real patches only
        x = batch.patches.clone()
        x[~batch.mask] = 7.0
        torch.testing.assert_close(model.encode_image(NaFlexBatch(x, batch.mask, batch.spatial_shapes)),
                                   model.encode_image(batch), atol=1e-5, rtol=1e-5)


def test_key_mask_equals_attention_over_the_real_tokens_only() -> None:
    torch.manual_seed(0)
    x, lengths = torch.randn(3, 10, 32), [10, 4, 1]
    mask = torch.arange(10)[None] < torch.tensor(lengths)[:, None]
    for causal in (False, True):
        attn = Attention(32, 4, causal=causal)
        out = attn(x, mask)
        for i, n in enumerate(lengths):
            torch.testing.assert_close(out[i, :n], attn(x[i:i + 1, :n])[0], atol=1e-6, rtol=1e-5)
    head = MAPHead(32, 4, 2.0, torch.nn.GELU)
    pooled = head(x, mask)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(pooled[i], head(x[i:i + 1, :n])[0], atol=1e-6, rtol=1e-5)


def test_evaluation_batches_naflex_images_unchanged(model: SigLIP) -> None:
    """The eval code stacks transformed images (``iter_batches``) and moves them (``EvalModel``): a NaFlex item
    goes through both as it is."""
    tf = NaFlexTransform(P, BUDGET, (0.5,) * 3, (0.5,) * 3)
    samples = [Sample(image=image(*SIZES[n], seed=i), label=i) for i, n in enumerate(("tall", "wide", "odd"))]
    scorer = EvalModel(model, tf, lambda texts: torch.zeros(len(texts), 16, dtype=torch.long))
    batches = list(iter_batches(samples, tf, batch_size=2))
    assert [len(b) for b, _ in batches] == [2, 1]
    features = torch.cat([scorer.encode_images(b) for b, _ in batches])
    with torch.no_grad():
        expected = F.normalize(model.encode_image(torch.stack([tf(s.image) for s in samples])), dim=-1)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
