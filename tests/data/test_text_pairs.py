"""CLIPPO's text/text pairs: corpus parsing, the world's multilingual pairs, and their share of each batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.config import ConfigError, parse_overrides
from clipforge.data.synthetic import SyntheticWorld, WorldConfig
from clipforge.data.text_pairs import CorpusPairs, WorldTextPairs, split_sentences
from clipforge.train import prepare
from clipforge.train.config import load_config


def test_sentences_split_after_stops_and_cjk_stops() -> None:
    assert split_sentences("One red circle.  Two\nblue squares!   Done?") == [
        "One red circle.", "Two blue squares!", "Done?"]
    assert split_sentences("赤い円。青い四角！ok") == ["赤い円。", "青い四角！", "ok"]
    assert split_sentences("  ") == []


def test_corpus_pairs_are_consecutive_sentences_within_paragraphs(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("A first. A second. A third.\n\nLonely sentence.\n\n\nB one! B two.\n", encoding="utf-8")
    pairs = CorpusPairs(path)
    assert list(pairs) == [("A first.", "A second."), ("A second.", "A third."), ("B one!", "B two.")]


def test_corpus_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such.txt: no such file"):
        CorpusPairs(tmp_path / "no-such.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9. ok.".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt: not UTF-8 text"):
        CorpusPairs(tmp_path / "latin1.txt")
    (tmp_path / "single.txt").write_text("One sentence only.\n\nAnother lonely one.")
    with pytest.raises(ValueError, match="single.txt: no paragraph with two sentences"):
        CorpusPairs(tmp_path / "single.txt")


def test_world_pairs_describe_one_scene_in_two_languages() -> None:
    world = SyntheticWorld(WorldConfig(image_size=32, languages=("en", "ru", "ja")))
    pairs = WorldTextPairs(world, 50)
    scripts = {"en": lambda s: s.isascii(), "ru": lambda s: any("а" <= c <= "я" for c in s.lower()),
               "ja": lambda s: any("\u3040" <= c <= "\u9fff" for c in s)}
    for i in range(50):
        a, b = pairs[i]
        la = [k for k, f in scripts.items() if f(a)]
        lb = [k for k, f in scripts.items() if f(b)]
        assert len(la) == 1 and len(lb) == 1 and la != lb, (a, b)
        assert a in world.captions("train", i, 1, la[0]) and b in world.captions("train", i, 1, lb[0])
    assert pairs[7] == WorldTextPairs(world, 50)[7]  # deterministic
    with pytest.raises(IndexError):
        pairs[50]


def _batches(fraction: float, batch_size: int = 8, rank: int = 0, world_size: int = 1):
    from clipforge.train.data import TrainData
    from clipforge.train.distributed import Runtime

    config = load_config(None, parse_overrides([
        "model=clippo-tiny", f"batch_size={batch_size}", f"text_pairs.fraction={fraction}", "text_pairs.size=64",
        "data.train_size=64", "data.augment=false"]))
    model_config = config.model_config()
    processor = clipforge.text.build_text_processor(model_config)
    _, eval_tf = clipforge.transforms.model_transforms(model_config)
    runtime = Runtime(rank=rank, world_size=world_size)
    return TrainData(config.data, eval_tf, processor, batch_size, config.seed, runtime,
                     model_config.vision.image_size, text_pairs=config.text_pairs).batches


def test_a_quarter_of_each_batch_is_text_pairs_rendered_on_the_image_side() -> None:
    batches = _batches(0.25)
    images, texts, info = batches[3]
    assert images.shape[0] == texts.shape[0] == 8 and info["text_pairs"] == 2
    # A text-pair row's image is the rendering of its first sentence, normalised as the model does.
    render = clipforge.text.build_text_processor(clipforge.create_model("clippo-tiny").config)
    rows = [j for j in range(8) if batches.is_pair_slot(j)]
    assert rows == [3, 7]
    for j in rows:
        first, second = batches.pair_at(3, j)
        expected = render([first]).float().div(255).sub(0.5).div(0.5)[0]
        torch.testing.assert_close(images[j], expected, atol=1e-6, rtol=0)
        assert torch.equal(texts[j], render([second])[0])


def test_ranks_split_pairs_and_images_exactly_like_one_process() -> None:
    whole = _batches(0.25)[5]
    parts = [_batches(0.25, rank=r, world_size=2)[5] for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    assert sum(p[2]["text_pairs"] for p in parts) == whole[2]["text_pairs"] == 2


def test_image_rows_take_the_image_caption_stream_in_order() -> None:
    """With 2 of 8 slots given to pairs, the 6 image rows of step s are samples 6s .. 6s + 5 of the stream."""
    mixed, plain = _batches(0.25), _batches(0.0, batch_size=6)
    image_rows = [j for j in range(8) if not mixed.is_pair_slot(j)]
    for step in (0, 1, 9):  # step 9 wraps past the 64-sample epoch
        images, texts, info = mixed[step]
        reference = plain[step]
        assert info["text_pairs"] == 2 and reference[2]["text_pairs"] == 0
        assert torch.equal(images[image_rows], reference[0]) and torch.equal(texts[image_rows], reference[1])


@pytest.mark.parametrize(("overrides", "message"), [
    (["text_pairs.fraction=0.25"], "text_pairs need a CLIPPO model"),
    (["model=clippo-tiny", "text_pairs.fraction=1.5"], r"text_pairs.fraction must be in \[0, 1\)"),
    (["model=clippo-tiny", "text_pairs.fraction=0.25", "text_pairs.path=/no/corpus.txt"],
     "text_pairs.path: no such file"),
])
def test_bad_text_pair_configs(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        prepare(load_config(None, parse_overrides(overrides)))  # the config, then the checks that read files
