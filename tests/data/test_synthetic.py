"""The synthetic world: determinism, held-out pairs, captions in three scripts, eval tasks, rendered colours."""

from __future__ import annotations

import pickle
import re
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from clipforge.data.synthetic import (
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    COUNTS,
    LANGUAGES,
    POSITIONS,
    SCATTERED,
    SHAPES,
    SIZES,
    SyntheticWorld,
    WorldConfig,
    make_caption,
)
from clipforge.data.synthetic.captions import en as english
from clipforge.data.synthetic.captions import ja as japanese
from clipforge.data.synthetic.captions import ru as russian


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(WorldConfig(seed=0))


@pytest.fixture(scope="module")
def multilingual() -> SyntheticWorld:
    return SyntheticWorld(WorldConfig(seed=0, languages=LANGUAGES))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


# --- Determinism. ---


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_same_seed_split_index_gives_identical_sample(split: str) -> None:
    a, b = SyntheticWorld(WorldConfig(seed=3)), SyntheticWorld(WorldConfig(seed=3))
    for index in (0, 1, 17, 123_456):
        sa, sb = a.sample(split, index), b.sample(split, index)
        assert sa.image.mode == "RGB" and sa.image.size == (64, 64)
        assert np.array_equal(pixels(sa.image), pixels(sb.image))
        assert sa.caption == sb.caption and sa.attributes == sb.attributes
    # Order of generation does not matter: a sample is a function of (seed, split, index) alone.
    late = a.sample(split, 5)
    assert np.array_equal(pixels(late.image), pixels(SyntheticWorld(WorldConfig(seed=3)).sample(split, 5).image))


def test_different_seeds_splits_and_indices_differ() -> None:
    a, b = SyntheticWorld(WorldConfig(seed=0)), SyntheticWorld(WorldConfig(seed=1))
    for index in range(5):
        assert not np.array_equal(pixels(a.sample("train", index).image), pixels(b.sample("train", index).image))
        assert not np.array_equal(pixels(a.sample("train", index).image), pixels(a.sample("test", index).image))
    assert [a.sample("train", i).caption for i in range(20)] != [b.sample("train", i).caption for i in range(20)]
    assert a.heldout_pairs != b.heldout_pairs


def test_images_do_not_depend_on_caption_languages(world: SyntheticWorld, multilingual: SyntheticWorld) -> None:
    for index in range(10):
        one, mixed = world.sample("train", index), multilingual.sample("train", index)
        assert np.array_equal(pixels(one.image), pixels(mixed.image))


def test_image_size_is_a_parameter() -> None:
    big = SyntheticWorld(WorldConfig(image_size=128))
    sample = big.sample("val", 0)
    assert sample.image.size == (128, 128) and sample.mask.shape == (128, 128)


# --- Held-out pairs. ---


def test_heldout_pairs_cover_every_colour_and_shape(world: SyntheticWorld) -> None:
    held = world.heldout_pairs
    assert len(held) == round(0.15 * len(COLOURS) * len(SHAPES)) == len(set(held))
    assert {c for c, _ in held} == set(COLOURS)
    assert {s for _, s in held} == set(SHAPES)
    # Every colour and every shape is still seen in training.
    assert {c for c, _ in world.train_pairs} == set(COLOURS)
    assert {s for _, s in world.train_pairs} == set(SHAPES)


def test_heldout_pairs_never_appear_in_train(world: SyntheticWorld) -> None:
    held = set(world.heldout_pairs)
    assert all(world.pair("train", i) not in held for i in range(20_000))
    for i in range(300):  # and the rendered samples agree with the cheap pair lookup
        attrs = world.sample("train", i).attributes
        assert (attrs["colour"], attrs["shape"]) == world.pair("train", i)
        assert (attrs["colour"], attrs["shape"]) not in held
    # Evaluation splits draw from all pairs, held-out ones included.
    assert any(world.pair("test", i) in held for i in range(500))


def test_no_holdout() -> None:
    world = SyntheticWorld(WorldConfig(holdout_fraction=0.0))
    assert world.heldout_pairs == []
    assert [t.name for t in world.zeroshot_tasks(20)] == ["shape", "colour", "count"]


# --- Attributes and rendering. ---


def test_attribute_coverage(world: SyntheticWorld) -> None:
    samples = [world.sample("train", i) for i in range(800)]
    keys = ("shape", "colour", "count", "size", "background")
    seen = {key: Counter(s.attributes[key] for s in samples) for key in keys}
    assert set(seen["shape"]) == set(SHAPES)
    assert set(seen["colour"]) == set(COLOURS)
    assert set(seen["count"]) == set(COUNTS)
    assert set(seen["size"]) == set(SIZES)
    assert set(seen["background"]) == set(BACKGROUNDS)
    singles = {s.attributes["position"] for s in samples if s.attributes["count"] == 1}
    assert singles == set(POSITIONS)
    assert {s.attributes["position"] for s in samples if s.attributes["count"] > 1} == {SCATTERED}
    assert {s.attributes["language"] for s in samples} == {"en"}


def test_max_objects_one_gives_single_objects() -> None:
    world = SyntheticWorld(WorldConfig(max_objects=1))
    assert {world.sample("train", i).attributes["count"] for i in range(50)} == {1}
    assert "count" not in [t.name for t in world.zeroshot_tasks(10)]


def test_object_pixels_have_the_named_colour(world: SyntheticWorld) -> None:
    """Known answer: the mean colour of fully covered object pixels is nearest to the named colour."""
    palette = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=np.float64)
    for i in range(300):
        sample = world.sample("test", i)
        rgb = pixels(sample.image).astype(np.float64)
        inside = sample.mask == 255
        assert inside.sum() >= 20, "object too small to read"
        mean = rgb[inside].mean(0)
        assert COLOURS[int(np.argmin(((palette - mean) ** 2).sum(1)))] == sample.attributes["colour"]
        # And the background is nowhere near it: the object stands out.
        background = rgb[sample.mask == 0].mean(0)
        assert np.linalg.norm(mean - background) > 60


def test_count_matches_connected_objects(world: SyntheticWorld) -> None:
    """Objects never touch: the number of 4-connected blobs in the mask is the count (rings have a hole, not a gap)."""

    def blobs(mask: np.ndarray) -> int:
        seen, n = np.zeros_like(mask, dtype=bool), 0
        for y, x in zip(*np.nonzero(mask)):
            if seen[y, x]:
                continue
            n, stack = n + 1, [(y, x)]
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        return n

    for i in range(60):
        sample = world.sample("val", i)
        assert blobs(sample.mask > 0) == sample.attributes["count"]


# --- Captions. ---

SCRIPT = {
    "en": lambda ch: ch.isascii(),
    "ru": lambda ch: "\u0400" <= ch <= "\u04ff",
    "ja": lambda ch: "\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_captions_are_in_the_language_script(language: str) -> None:
    world = SyntheticWorld(WorldConfig(languages=(language,)))
    captions = [world.sample("train", i).caption for i in range(200)]
    for caption in captions:
        letters = [ch for ch in caption if ch.isalpha()]
        assert letters, caption
        assert all(SCRIPT[language](ch) for ch in letters), caption
    assert len(set(captions)) > 150, "captions should vary"


def _named(caption: str, language: str) -> tuple[set[str], set[str]]:
    """The colours and shapes a caption names, found with each language's word forms."""
    if language == "en":
        words = set(re.findall(r"[a-z]+", caption.lower()))
        return {c for c in COLOURS if c in words}, {s for s, forms in english.SHAPE.items() if words & set(forms)}
    if language == "ru":
        words = set(re.findall(r"\w+", caption.lower()))
        return (
            {c for c, forms in russian.COLOUR.items() if words & set(forms)},
            {s for s, (_, *forms) in russian.NOUN.items() if words & set(forms)},
        )
    return (
        {c for c, forms in japanese.COLOUR.items() if any(f in caption for f in forms)},
        {s for s, forms in japanese.SHAPE.items() if any(f in caption for f in forms)},
    )


@pytest.mark.parametrize("language", LANGUAGES)
def test_captions_name_the_true_colour_and_shape(language: str) -> None:
    world = SyntheticWorld(WorldConfig(languages=(language,)))
    both = 0
    for i in range(300):
        sample = world.sample("train", i)
        colours, shapes = _named(sample.caption, language)
        assert colours <= {sample.attributes["colour"]}, sample.caption
        assert shapes <= {sample.attributes["shape"]}, sample.caption
        assert colours or shapes, sample.caption
        both += bool(colours and shapes)
    assert both > 0.7 * 300


def test_caption_wording_known_answers() -> None:
    # Russian agreement: numerals 2–4 take the genitive singular; adjectives follow the noun's gender.
    assert russian.phrase("red", "star", 2) == "две красные звезды"
    assert russian.phrase("black", "cross", 3) == "три чёрных креста"
    assert russian.phrase("blue", "ring", 1) == "синее кольцо"
    assert russian.phrase("white", "hexagon", 2, ("большой", "большая", "большое", "большие", "больших")) == (
        "два больших белых шестиугольника"
    )
    attrs = {"shape": "star", "colour": "red", "count": 2, "size": "small", "position": SCATTERED, "background": "dots"}
    for seed in range(50):
        en = make_caption(attrs, "en", np.random.default_rng(seed))
        assert re.search(r"\b(two|2|a pair of)\b", en.lower()), en
        assert re.search(r"\b(stars|shapes|objects)\b", en), en
        ru = make_caption(attrs, "ru", np.random.default_rng(seed))
        assert re.search(r"\b(две|2)\b", ru.lower()), ru
        ja = make_caption(attrs, "ja", np.random.default_rng(seed))
        assert any(n in ja for n in ("二つ", "ふたつ", "2個")), ja
    with pytest.raises(ValueError, match="language"):
        make_caption(attrs, "de", np.random.default_rng(0))


def test_language_mix_is_deterministic_per_sample(multilingual: SyntheticWorld) -> None:
    languages = [multilingual.sample("train", i).attributes["language"] for i in range(60)]
    assert set(languages) == set(LANGUAGES)
    again = SyntheticWorld(WorldConfig(seed=0, languages=LANGUAGES))
    assert languages == [again.sample("train", i).attributes["language"] for i in range(60)]
    for i in range(60):
        sample = multilingual.sample("train", i)
        letters = [ch for ch in sample.caption if ch.isalpha()]
        assert all(SCRIPT[sample.attributes["language"]](ch) for ch in letters), sample.caption


# --- Evaluation sets. ---


@pytest.mark.parametrize("language", LANGUAGES)
def test_zeroshot_tasks_are_consistent(world: SyntheticWorld, language: str) -> None:
    tasks = {t.name: t for t in world.zeroshot_tasks(size=40, language=language)}
    assert list(tasks) == ["shape", "colour", "count", "composition"]
    for task in tasks.values():
        assert len(task.images) == len(task.labels) == len(task.indices) == 40
        assert all(0 <= label < len(task.classnames) for label in task.labels)
        assert len(set(task.classnames)) == len(task.classnames)
        assert task.templates and all(t.count("{}") == 1 for t in task.templates)
        assert all(SCRIPT[language](ch) for name in task.classnames for ch in name if ch.isalpha())
        assert task.split == "test"
    assert len(tasks["shape"].classnames) == len(SHAPES) and len(tasks["colour"].classnames) == len(COLOURS)
    held = set(world.heldout_pairs)
    for name in ("shape", "colour", "count"):  # in-distribution tasks use seen pairs only
        assert all(world.pair("test", i) not in held for i in tasks[name].indices)
    for index, label in zip(tasks["shape"].indices, tasks["shape"].labels):
        assert SHAPES[label] == world.sample("test", index).attributes["shape"]
    composition = tasks["composition"]
    assert len(composition.classnames) == len(world.heldout_pairs)
    for index, label, image in zip(composition.indices, composition.labels, composition.images):
        attrs = world.sample("test", index).attributes
        assert (attrs["colour"], attrs["shape"]) == world.heldout_pairs[label]
        assert np.array_equal(pixels(image), pixels(world.sample("test", index).image))
    if language == "en":
        assert composition.classnames[0] == " ".join(world.heldout_pairs[0])


def test_zeroshot_tasks_are_deterministic(world: SyntheticWorld) -> None:
    a = world.zeroshot_tasks(size=10)
    b = SyntheticWorld(WorldConfig(seed=0)).zeroshot_tasks(size=10)
    for ta, tb in zip(a, b):
        assert ta.indices == tb.indices and ta.labels == tb.labels and ta.classnames == tb.classnames
    with pytest.raises(ValueError, match="train"):
        world.zeroshot_tasks(size=5, split="train")


def test_retrieval_set(world: SyntheticWorld) -> None:
    images, captions = world.retrieval_set(size=20, language="ru", captions_per_image=4)
    assert len(images) == len(captions) == 20
    for i, (image, texts) in enumerate(zip(images, captions)):
        assert len(texts) == 4 and len(set(texts)) == 4
        assert np.array_equal(pixels(image), pixels(world.sample("test", i).image))
        attrs = world.sample("test", i).attributes
        for text in texts:
            colours, shapes = _named(text, "ru")
            assert colours <= {attrs["colour"]} and shapes <= {attrs["shape"]} and (colours or shapes), text
    assert world.retrieval_set(size=3, language="ja")[1] == world.retrieval_set(size=3, language="ja")[1]


# --- Dataset and config. ---


def test_dataset(world: SyntheticWorld) -> None:
    ds = world.dataset("train", 10, transform=lambda im: pixels(im).shape)
    assert len(ds) == 10
    shape, caption = ds[3]
    assert shape == (64, 64, 3) and caption == world.sample("train", 3).caption
    with pytest.raises(IndexError):
        ds[10]
    assert len(list(world.dataset("val", 4))) == 4  # iteration stops at the end
    cached = world.dataset("train", 5, start=100, cache=True)
    first, second = cached[2], cached[2]
    assert first[0] is second[0] and first[1] == world.sample("train", 102).caption
    clone = pickle.loads(pickle.dumps(world.dataset("test", 5)))  # DataLoader workers pickle it
    assert np.array_equal(pixels(clone[1][0]), pixels(world.sample("test", 1).image))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", -1),
        ("seed", 1.5),
        ("image_size", 8),
        ("languages", ()),
        ("languages", ("en", "de")),
        ("languages", ["en"]),
        ("holdout_fraction", 0.9),
        ("max_objects", 4),
        ("max_objects", 0),
        ("contrast_group", 0),
        ("contrast_group", 9),
    ],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        WorldConfig(**{field: value})


# --- Contrast groups: scenes that differ in the shape alone. ---


def test_contrast_groups_differ_in_the_shape_alone() -> None:
    grouped = SyntheticWorld(WorldConfig(seed=3, contrast_group=4))
    held = set(grouped.heldout_pairs)
    shape_named = 0
    for base in range(40):
        members = [grouped.sample("train", 4 * base + m) for m in range(4)]
        shapes = [s.attributes["shape"] for s in members]
        assert len(set(shapes)) == 4, shapes  # every colour keeps at least 4 training shapes here
        for s in members:
            assert (s.attributes["colour"], s.attributes["shape"]) not in held
            assert grouped.pair("train", 4 * base + members.index(s)) == (s.attributes["colour"], s.attributes["shape"])
            rest = {k: v for k, v in s.attributes.items() if k != "shape"}
            assert rest == {k: v for k, v in members[0].attributes.items() if k != "shape"}
        # Same background pixels (the objects are the only difference) and the same wording.
        background = [(pixels(s.image), s.mask == 0) for s in members]
        both = background[0][1] & background[1][1]
        assert both.sum() > 0.5 * both.size
        np.testing.assert_array_equal(background[0][0][both], background[1][0][both])
        words = [s.caption.split() for s in members]
        assert all(len(w) == len(words[0]) for w in words)
        differing = {i for w in words[1:] for i, (a, b) in enumerate(zip(w, words[0])) if a != b}
        assert len(differing) <= 1  # only the shape noun, when the caption names it
        shape_named += bool(differing)
        # The first member is the ungrouped world's scene.
        plain = SyntheticWorld(WorldConfig(seed=3)).sample("train", base)
        assert plain.caption == members[0].caption
        np.testing.assert_array_equal(pixels(plain.image), pixels(members[0].image))
    assert shape_named > 25


def test_contrast_groups_leave_eval_splits_alone() -> None:
    grouped, plain = SyntheticWorld(WorldConfig(contrast_group=4)), SyntheticWorld(WorldConfig())
    for split in ("val", "test"):
        for i in range(12):
            a, b = grouped.sample(split, i), plain.sample(split, i)
            assert a.caption == b.caption and a.attributes == b.attributes
    assert grouped.dataset("val", 10).group_size == 1 and grouped.dataset("train", 8).group_size == 4
    with pytest.raises(ValueError, match="multiples of 4"):
        grouped.dataset("train", 10)


def test_split_and_index_validation(world: SyntheticWorld) -> None:
    with pytest.raises(ValueError, match="split"):
        world.sample("training", 0)
    with pytest.raises(IndexError):
        world.sample("train", -1)


def test_generation_speed(world: SyntheticWorld) -> None:
    """Prints images/s (no assertion: timings belong in reports, not in pass/fail)."""
    world.sample("train", 0)  # warm the texture bank
    n = 1000
    start = time.perf_counter()
    for i in range(n):
        world.sample("train", i)
    elapsed = time.perf_counter() - start
    print(f"\nsynthetic world: {n / elapsed:.0f} samples/s (64 px, image + caption, one process)")
