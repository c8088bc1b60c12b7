"""Caption-preserving augmentation: the word rules, each augmentation's known effect, text augmentation, the
decoder's ``alpha="keep"``, and the batches' extra views and captions from tar shards."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clipforge.config import ConfigError
from clipforge.data.augment import (
    AugmentConfig,
    AugmentTransform,
    SampleRecipe,
    TextAugmentConfig,
    augment_text,
    background_for,
    fill_shapes,
    has_colour,
    has_direction,
    nesting,
    reweight,
)
from clipforge.data.decode import DecodeLimits, decode_image

IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean, std: the tensor is the pixels in [0, 1]


def glyph(size: int = 32) -> Image.Image:
    """A black 'L' on a transparent background: not mirror-symmetric."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    pixels = image.load()
    for y in range(4, size - 4):
        for x in range(4, 9):
            pixels[x, y] = (0, 0, 0, 255)
    for y in range(size - 9, size - 4):
        for x in range(4, size - 10):
            pixels[x, y] = (0, 0, 0, 255)
    return image


def on_white(image: Image.Image) -> np.ndarray:
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(background, image).convert("RGB"), dtype=np.float32) / 255


def pixels(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


def transform(**options) -> AugmentTransform:
    return AugmentTransform(32, *IDENTITY, AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), **options))


@pytest.mark.parametrize("caption, direction, colour", [
    ("an icon of a house.", False, False),
    ("arrow-left", True, False),
    ("a thumbs up, drawn in outline style", False, False),
    ("heading h1", True, False),
    ("text align justify", True, False),
    ("a red car", False, True),
    ("Circle, GRAY", False, True),
    ("turn right at the lights", True, False),
])
def test_the_word_rules(caption: str, direction: bool, colour: bool):
    assert has_direction(caption) is direction
    assert has_colour(caption) is colour


def test_a_flip_happens_only_without_left_right_words():
    image = glyph()
    flipped = transform(flip=1.0)(image, random.Random(0), "an icon of a letter-shaped bracket")
    kept = transform(flip=1.0)(image, random.Random(0), "a bracket")
    np.testing.assert_allclose(pixels(flipped), on_white(image), atol=1e-6)  # "letter": never mirrored
    np.testing.assert_allclose(pixels(kept), on_white(image)[:, ::-1], atol=1e-6)


def test_backgrounds_contrast_with_the_glyph_and_respect_colour_words():
    image = glyph()
    out = pixels(transform(backgrounds=1.0)(image, random.Random(1), "a bracket"))
    corner = out[0, 0]
    luma = float(corner @ np.array([0.299, 0.587, 0.114]))
    assert luma >= 0.45 - 1e-3  # the glyph is black: the background is light enough to keep it visible
    assert not np.allclose(corner, 1.0)  # and not the plain white of the default rule
    assert np.allclose(out[10, 6], 0.0)  # the glyph itself is untouched
    white = pixels(transform(backgrounds=1.0)(image, random.Random(1), "a white bracket"))
    np.testing.assert_allclose(white, on_white(image), atol=1e-6)
    light = Image.new("RGBA", (8, 8), (250, 250, 250, 255))
    light.putpixel((0, 0), (0, 0, 0, 0))
    r, g, b = background_for(light, random.Random(0))
    assert (0.299 * r + 0.587 * g + 0.114 * b) / 255 <= 0.98 - 0.45 + 1e-3  # a light glyph gets a dark background


def test_colour_jitter_and_grayscale_skip_colour_words():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    plain = pixels(transform()(rgb, random.Random(2), "a bird"))
    jittered = pixels(transform(color_jitter=0.4)(rgb, random.Random(2), "a bird"))
    spared = pixels(transform(color_jitter=0.4, grayscale=1.0)(rgb, random.Random(2), "a blue bird"))
    assert np.abs(jittered - plain).mean() > 0.01
    np.testing.assert_allclose(spared, plain, atol=1e-6)
    grey = pixels(transform(grayscale=1.0)(rgb, random.Random(2), "a bird"))
    assert np.allclose(grey[..., 0], grey[..., 1]) and np.allclose(grey[..., 1], grey[..., 2])


def test_stroke_changes_the_line_weight_and_skips_weight_and_style_words():
    image = glyph()
    ink = np.asarray(image.getchannel("A")) > 0  # the L's strokes are 5 pixels wide
    bolder = np.asarray(reweight(image, 1).getchannel("A")) > 0
    assert (bolder & ink).sum() == ink.sum() and bolder.sum() > ink.sum()  # the strokes grew by a pixel
    assert (np.asarray(reweight(image, 2).getchannel("A")) > 0).sum() > bolder.sum()
    drawn = [(pixels(transform(stroke=1.0, stroke_radius=2)(image, random.Random(seed), "a bracket"))[..., 0] < 0.5)
             for seed in range(8)]
    assert all((d & ink).sum() == ink.sum() and d.sum() > ink.sum() for d in drawn)  # always bolder, never lighter
    assert len({int(d.sum()) for d in drawn}) == 2  # by 1 or 2 pixels
    for caption in ("a bold bracket", "bracket, filled", "an outline bracket"):
        kept = pixels(transform(stroke=1.0)(image, random.Random(0), caption))
        np.testing.assert_allclose(kept, on_white(image), atol=1e-6)


def framed(size: int = 32) -> Image.Image:
    """A black square outline (depth 1) around a hole (2) holding a smaller square outline (3) around its own
    hole (4), on a transparent background (0)."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle((2, 2, size - 3, size - 3), outline=(0, 0, 0, 255), width=2)
    draw.rectangle((10, 10, size - 11, size - 11), outline=(0, 0, 0, 255), width=2)
    return image


def test_nesting_counts_the_shapes_from_the_outside_in():
    depth = nesting(np.asarray(framed().getchannel("A")) > 0)
    assert [depth[16, x] for x in (0, 2, 5, 10, 16)] == [0, 1, 2, 3, 4]
    assert set(np.unique(depth)) == {0, 1, 2, 3, 4}
    assert (nesting(np.asarray(glyph().getchannel("A")) > 0) <= 1).all()  # an open shape encloses nothing
    assert (nesting(np.zeros((8, 8), bool)) == 0).all()


def test_fill_draws_line_drawings_filled_and_keeps_the_inner_ink_visible():
    image = framed()
    before = np.asarray(image.getchannel("A")).astype(int)
    depth = nesting(before > 0)
    solid = np.asarray(fill_shapes(image, 1.0).getchannel("A")).astype(int)
    assert (solid[depth <= 1] == before[depth <= 1]).all()  # the outside and the outer strokes as they were
    assert (solid[depth == 2] == 255).all() and (solid[depth == 4] == 255).all()  # the holes filled
    assert (solid[depth == 3] == 0).all()  # the inner strokes knocked out of the solid fill
    faint = np.asarray(fill_shapes(image, 0.25).getchannel("A")).astype(int)
    assert (faint[depth == 2] == 64).all() and (faint[depth == 4] == 64).all()
    assert (faint[depth == 3] == 255).all() and (faint[depth <= 1] == before[depth <= 1]).all()  # kept as ink
    assert np.asarray(fill_shapes(glyph(), 1.0)).tobytes() == np.asarray(glyph()).tobytes()  # nothing to fill
    filled = pixels(transform(fill=1.0, fill_opacity=(1.0, 1.0))(image, random.Random(0), "a box"))
    np.testing.assert_allclose(filled, on_white(fill_shapes(image, 1.0)), atol=1e-6)
    for caption in ("an outline box", "box, solid", "a thin box"):
        kept = pixels(transform(fill=1.0)(image, random.Random(0), caption))
        np.testing.assert_allclose(kept, on_white(image), atol=1e-6)


def test_rotation_fills_the_corners_with_the_background():
    black = Image.new("RGB", (32, 32), (0, 0, 0))
    out = pixels(transform(rotation=30)(black, random.Random(3), "a square"))
    assert abs(random.Random(3).uniform(-30, 30)) > 5  # this seed's angle turns the corners out of the picture
    assert out[0, 0].min() > 0.9 and out[16, 16].max() < 0.05


def test_the_same_rng_gives_the_same_augmentation():
    config = dict(rotation=10, flip=0.5, color_jitter=0.4, backgrounds=0.5, grayscale=0.2)
    a = transform(**config)(glyph(), random.Random(7), "a bracket")
    b = transform(**config)(glyph(), random.Random(7), "a bracket")
    assert torch.equal(a, b)


def test_text_augmentation():
    caption = "a house icon, building, home, roof."
    assert augment_text(caption, TextAugmentConfig(tag_dropout=1.0), random.Random(0)) == "a house icon."
    shuffled = augment_text(caption, TextAugmentConfig(tag_shuffle=True), random.Random(4))
    head, *tags = shuffled.rstrip(".").split(", ")
    assert head == "a house icon" and sorted(tags) == ["building", "home", "roof"]
    templated = augment_text(caption, TextAugmentConfig(templates=("a drawing of a {}.",), template_prob=1.0),
                             random.Random(0))
    assert templated == "a drawing of a building, building, home, roof."
    assert augment_text("a house icon.", TextAugmentConfig(tag_dropout=1.0), random.Random(0)) == "a house icon."
    kept = [augment_text(caption, TextAugmentConfig(tag_dropout=0.5), random.Random(s)).count(",")
            for s in range(200)]
    assert 0.8 < np.mean(kept) < 2.2  # three tags, each kept with probability 0.5: 1.5 on average


def test_word_dropout_drops_words_of_the_head_and_keeps_one():
    words = "an icon of a map pin star"
    drawn = [augment_text(words + ".", TextAugmentConfig(word_dropout=0.3), random.Random(s)) for s in range(300)]
    assert all(d.endswith(".") and set(d[:-1].split()) <= set(words.split()) for d in drawn)
    assert all(d[:-1].split() == [w for w in words.split() if w in d[:-1].split()] for d in drawn)  # order kept
    assert 0.6 < np.mean([len(d.split()) for d in drawn]) / 7 < 0.8  # each of 7 words kept with probability 0.7
    assert augment_text("an icon of a map.", TextAugmentConfig(word_dropout=1.0), random.Random(0)).count(" ") == 0
    assert augment_text("house", TextAugmentConfig(word_dropout=1.0), random.Random(0)) == "house"
    tagged = augment_text("a house icon, building, roof.", TextAugmentConfig(word_dropout=0.5), random.Random(1))
    assert tagged.endswith(", building, roof.")  # the tags are tag_dropout's


def test_the_image_checks_the_caption_as_drawn_not_as_text_augmentation_leaves_it():
    recipe = SampleRecipe(transform(flip=1.0), TextAugmentConfig(word_dropout=0.9))
    unflipped = transform()(glyph(), random.Random(0), "a")
    lost = 0
    for seed in range(10):
        tensor, caption, _ = recipe(glyph(), ["an arrow pointing left"], random.Random(seed))
        lost += "left" not in caption
        assert torch.equal(tensor, unflipped)  # never flipped, though the caption may have lost its "left"
    assert lost >= 5
    flipped, _, _ = recipe(glyph(), ["an arrow"], random.Random(0))
    assert torch.equal(flipped, unflipped.flip(-1))


@pytest.mark.parametrize("options, message", [
    ({"scale": (0.0, 1.0)}, "augment.scale"),
    ({"flip": 1.5}, "augment.flip"),
    ({"color_jitter": 1.0}, "augment.color_jitter"),
    ({"rotation": -1}, "augment.rotation"),
    ({"stroke": 2.0}, "augment.stroke"),
    ({"stroke_radius": 0}, "augment.stroke_radius"),
    ({"fill": -0.1}, "augment.fill"),
    ({"fill_opacity": (0.0, 1.0)}, "augment.fill_opacity"),
    ({"fill_opacity": (0.8, 0.5)}, "augment.fill_opacity"),
])
def test_bad_augment_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        AugmentConfig(**options)


def test_bad_text_augment_options_are_named():
    with pytest.raises(ConfigError, match=r"templates\[0\]"):
        TextAugmentConfig(templates=("no slot",))
    with pytest.raises(ConfigError, match="template_prob"):
        TextAugmentConfig(template_prob=0.5)


def test_the_decoder_keeps_alpha_when_asked():
    buffer = io.BytesIO()
    glyph().save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), DecodeLimits(alpha="keep")).mode == "RGBA"
    assert decode_image(buffer.getvalue(), DecodeLimits()).mode == "RGB"
    opaque = io.BytesIO()
    Image.new("RGB", (16, 16)).save(opaque, format="PNG")
    assert decode_image(opaque.getvalue(), DecodeLimits(alpha="keep")).mode == "RGB"


def test_a_sample_recipe_draws_views_and_a_second_caption():
    recipe = SampleRecipe(transform(flip=0.5), TextAugmentConfig(tag_dropout=0.5), views=(transform(),) * 3,
                          second_caption=True)
    tensor, caption, extra = recipe(glyph(), ["a bracket, corner, angle", "an L, corner"], random.Random(0))
    assert tensor.shape == (3, 32, 32) and extra["views"].shape == (3, 3, 32, 32)
    assert isinstance(caption, str) and isinstance(extra["caption2"], str)
    drawn = {recipe(glyph(), ["a", "b, c", "d"], random.Random(s))[2]["caption2"] for s in range(30)}
    plain = SampleRecipe(transform(), views=(transform(flip=1.0),))  # each view its own transform
    main, _, extra = plain(glyph(), ["a bracket"], random.Random(0))
    assert torch.allclose(extra["views"][0], main.flip(-1))
    assert len(drawn) > 2  # the second caption is a draw of its own


def test_shard_batches_carry_the_views_and_the_second_captions(tmp_path: Path):
    from clipforge.data.config import ShardsDataConfig
    from clipforge.data.writer import write_shards
    from clipforge.models.factory import build_config
    from clipforge.text import build_text_processor
    from clipforge.train.data import TrainData
    from clipforge.train.distributed import Runtime
    from clipforge.transforms import TrainTransform

    def sample(i: int) -> tuple[bytes, bytes, dict]:
        buffer = io.BytesIO()
        glyph().rotate(90 * (i % 4)).save(buffer, format="PNG")
        return buffer.getvalue(), f"a bracket {i}\nan angle {i}".encode(), {}

    write_shards(sample, 16, tmp_path / "shards", shard_size=8, progress=False)
    config = ShardsDataConfig(urls=str(tmp_path / "shards"))
    text = build_text_processor(build_config("tiny-rn"))
    plain = TrainTransform(32, *IDENTITY)

    def first_batch():
        augment = AugmentTransform(32, *IDENTITY, AugmentConfig(backgrounds=1.0))
        recipe = SampleRecipe(augment, None, views=(augment, augment), second_caption=True)
        data = TrainData(config, plain, text, 4, 0, Runtime(), 32, recipe=recipe)
        return next(iter(data.loader(0, 1)))

    images, texts, info = first_batch()
    assert images.shape == (4, 3, 32, 32) and info["views"].shape == (4, 2, 3, 32, 32)
    assert info["texts2"].shape == texts.shape
    assert not torch.allclose(images[:, :, 0, 0], torch.ones(4, 3))  # RGBA reached the transform: not white
    again = first_batch()
    assert torch.equal(images, again[0]) and torch.equal(info["views"], again[2]["views"])
