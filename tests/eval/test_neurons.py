"""clipforge.eval.neurons: hooks read the tensors a manual forward computes, streamed top-k is exact on a planted
unit, the multimodal score on constructed cases, feature visualisation, vocabularies and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipforge.api import create_model, get_text_processor
from clipforge.eval.adapter import EvalModel
from clipforge.eval.datasets import EvalDataset, Sample
from clipforge.eval.neurons import (
    Layer,
    get_layer,
    layer_activations,
    list_layers,
    load_vocabulary,
    record,
    render_words,
    unit_score,
    visualise,
)
from clipforge.eval.neurons.layers import text_directions
from clipforge.eval.neurons.score import find_multimodal
from clipforge.transforms import EvalTransform

pytestmark = pytest.mark.usefixtures("one_thread")  # an oversubscribed OpenMP pool is several times slower

VIT = {"embed_dim": 16, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2},
       "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}
RN = {"embed_dim": 16, "vision": {"image_size": 32, "width": 8, "heads": 2},
      "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return create_model("tiny-vit", **VIT).eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("tiny-rn", **RN).eval()


def eval_model(model: nn.Module) -> EvalModel:
    return EvalModel(model, EvalTransform(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), get_text_processor(model), "cpu")


def test_vit_hooks_read_the_residual_stream_and_mlp_neurons(vit: nn.Module) -> None:
    images = torch.randn(3, 3, 32, 32)
    visual = vit.visual
    with torch.no_grad():  # the forward of VisionTransformer, by hand, to block 1
        x = visual.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_token.expand(3, 1, -1), x], dim=1) + visual.pos_embed
        x = visual.ln_pre(x)
        x0 = visual.transformer.blocks[0](x)
        block = visual.transformer.blocks[1]
        h = x0 + block.attn(block.ln_1(x0))
        hidden = block.mlp.act(block.mlp.fc(block.ln_2(h)))  # (B, T, 4 · width)
        x1 = h + block.mlp.proj(hidden)
        got_res = layer_activations(vit, get_layer(vit, "visual.blocks.1"), images)
        got_mlp = layer_activations(vit, get_layer(vit, "visual.blocks.1.mlp"), images)
        got_emb = layer_activations(vit, get_layer(vit, "embedding"), images)
    torch.testing.assert_close(got_res, x1.mean(1))
    torch.testing.assert_close(got_mlp, hidden.mean(1))
    torch.testing.assert_close(got_emb, F.normalize(vit.encode_image(images), dim=-1))
    assert get_layer(vit, "visual.blocks.1.mlp").units == 128 and get_layer(vit, "embedding").units == 16


def test_resnet_hooks_read_stage_channels(resnet: nn.Module) -> None:
    images = torch.randn(2, 3, 32, 32)
    v = resnet.visual
    with torch.no_grad():
        x = F.relu(v.bn1(v.conv1(images)))
        x = F.relu(v.bn2(v.conv2(x)))
        x = v.avgpool(F.relu(v.bn3(v.conv3(x))))
        x = v.layer2(v.layer1(x))
        got = layer_activations(resnet, get_layer(resnet, "visual.layer2"), images)
    torch.testing.assert_close(got, x.mean(dim=(2, 3)))
    names = list(list_layers(resnet))
    assert names[:2] == ["visual.layer1", "visual.layer1.0"] and names[-1] == "embedding"


def test_text_directions_are_cosines_with_the_words_text_embeddings(vit: nn.Module) -> None:
    model = eval_model(vit)
    words = ["circle", "star", "ring"]
    texts = model.encode_texts([f"a photo of a {w}." for w in words])
    layer = text_directions(vit, texts, words)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        got = layer_activations(vit, layer, images)
        expected = F.normalize(vit.encode_image(images), dim=-1) @ texts.T
    torch.testing.assert_close(got, expected)
    assert layer.units == 3 and layer.names == ("circle", "star", "ring") and layer.name == "embedding.text"


def test_a_bad_layer_name_lists_the_valid_ones(resnet: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'visual\.layer9'; valid layers: visual\.layer1, .*embedding, "
                                         r"embedding\.text$"):
        get_layer(resnet, "visual.layer9")


class Brightness(nn.Module):
    """A toy model whose unit 1 is an image's mean brightness (unit 0 its negative, unit 2 zero)."""

    config = type("C", (), {"embed_dim": 3})()

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Identity()
        self.head = nn.Identity()

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        m = images.mean(dim=(1, 2, 3))
        return self.head(torch.stack([-m, m, torch.zeros_like(m)], 1))


class Greys(EvalDataset):
    def __init__(self, levels: list[int]) -> None:
        super().__init__(classes=["dark", "light"])
        self.levels = levels

    def __iter__(self):  # type: ignore[no-untyped-def]
        for i, v in enumerate(self.levels):
            yield Sample(Image.new("RGB", (4, 4), (v, v, v)), label=int(v > 127), source=f"grey:{i}")


def test_streamed_top_k_is_exact_on_a_planted_unit() -> None:
    toy = Brightness()
    layer = Layer("head", "channel", toy.head, 3, lambda x: x)
    levels = [int(v) for v in np.random.default_rng(0).permutation(256)[:150]]
    model = EvalModel(toy, lambda im: torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1),
                      lambda t: torch.zeros(len(t), 1), "cpu")
    rec = record(model, layer, Greys(levels), [1, 0], k=5, batch_size=7, reservoir=40)
    best = np.argsort(levels)[::-1][:5]
    assert rec.top_indices[:, 0].tolist() == best.tolist()
    np.testing.assert_allclose(rec.top_values[:, 0], np.array(levels)[best] / 255, rtol=1e-6)
    assert rec.top_indices[:, 1].tolist() == np.argsort(levels)[:5].tolist()  # unit 0: the darkest
    assert rec.count == 150 and rec.labels.tolist() == [int(v > 127) for v in levels]
    assert len(rec.reservoir_indices) == 40 and len(set(rec.reservoir_indices.tolist())) == 40
    np.testing.assert_allclose(rec.reservoir[:, 0], np.array(levels)[rec.reservoir_indices] / 255, rtol=1e-6)
    (q, i, v), = rec.quantile_examples(1, (1.0,))
    assert q == 1.0
    assert v == rec.reservoir[:, 0].max() and levels[i] / 255 == pytest.approx(v)
    assert rec.mean[0] == pytest.approx(np.mean(levels) / 255)


def test_the_score_on_constructed_units() -> None:
    words = ["circle", "square", "star", "ring"]
    classes = ["circle", "square", "star"]
    one = unit_score(0, np.array([2, 2, 2, 2]), classes, np.array([0.1, 0.2, 0.9, 0.3]), words)
    assert (one.score, one.concept, one.purity, one.word_rank) == (1.0, "star", 1.0, 1)
    assert one.word_z == pytest.approx((0.9 - 0.375) / np.std([0.1, 0.2, 0.9, 0.3]))
    second = unit_score(1, np.array([1, 1, 0, 1]), classes, np.array([0.1, 0.5, 0.2, 0.9]), words)
    assert second.concept == "square" and second.purity == 0.75 and second.word_rank == 2
    assert second.score == pytest.approx(0.375) and second.top_words[:2] == ("ring", "square")
    silent = unit_score(2, np.array([0, 0]), classes, np.zeros(4), words)  # ties count against the concept
    assert silent.word_rank == 4 and silent.score == 0.25 and silent.word_z == 0.0
    tie = unit_score(3, np.array([0, 1, 1, 0]), classes, np.array([0.5, 0.4, 0.0, 0.0]), words)
    assert tie.concept == "circle"  # ties between classes: the one whose images rank higher
    unnamed = unit_score(4, np.array([0]), ["blob"], np.ones(4), words)
    assert unnamed.word_rank is None and unnamed.score == 0.0
    unlabelled = unit_score(5, np.array([-1, -1]), classes, np.ones(4), words)
    assert unlabelled.concept is None and unlabelled.score == 0.0
    ranked = find_multimodal([second, one, silent, tie], 3)
    assert [s.unit for s in ranked] == [0, 3, 1]  # 1.0, then 0.5 / 1, then 0.75 / 2


def test_feature_visualisation_is_deterministic_and_raises_the_unit(vit: nn.Module) -> None:
    model = eval_model(vit)
    layer = get_layer(vit, "visual.blocks.1.mlp")
    a = visualise(model, layer, 5, 32, steps=6, lr=0.1, seed=3)
    b = visualise(model, layer, 5, 32, steps=6, lr=0.1, seed=3)
    c = visualise(model, layer, 5, 32, steps=6, lr=0.1, seed=4)
    assert a.image.tobytes() == b.image.tobytes() and a.trace == b.trace
    assert a.image.tobytes() != c.image.tobytes()
    assert a.end > a.start + 0.05 and a.image.size == (32, 32)
    assert all(p.requires_grad for p in vit.parameters())  # the model's own flags are restored
    pixels = visualise(model, layer, 5, 32, steps=6, lr=0.1, seed=3, fourier=False, decorrelate=False)
    assert pixels.end > pixels.start


def test_vocabularies_and_the_empty_vocabulary_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    words = load_vocabulary(["synthetic", "cifar10"], extra=["circle", "dog", "zebra"])
    assert words[:2] == ["circle", "square"] and "airplane" in words and words.count("dog") == 1
    assert words[-1] == "zebra"
    (tmp_path / "w.txt").write_text("apple\n\nipod\n", encoding="utf-8")
    assert load_vocabulary([str(tmp_path / "w.txt")]) == ["apple", "ipod"]
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no words in the file"):
        load_vocabulary([str(tmp_path / "empty.txt")])
    with pytest.raises(ValueError, match="empty vocabulary"):
        load_vocabulary(["", " "])
    with pytest.raises(FileNotFoundError, match="words file not found"):
        load_vocabulary(["no-such-set"])
    image = render_words(["ring"], 48)[0]
    grey = np.asarray(image)[..., 0]
    assert image.size == (48, 48) and set(np.unique(grey)) == {0, 127} and (grey[:16] == 0).any()
    assert not (grey[16:] == 0).any()  # one row of 16-pixel glyphs from the top left
