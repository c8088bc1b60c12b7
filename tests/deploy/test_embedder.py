"""``clipforge.deploy.Embedder`` against the PyTorch model it was exported from: image and text embeddings within
1e-4 (measured: a few 1e-7), zero-shot probabilities by the model's scoring, for CLIP, CLIPPO and SigLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.data.decode import to_rgb
from clipforge.deploy import Embedder
from clipforge.eval.adapter import EvalModel
from clipforge.eval.zeroshot import build_classifier

TOL = 1e-4
TEXTS = ["a photo of a cat", "", "Two DOGS playing in the snow!!", "café naïve über straße 東京 写真",
         "a very long caption " * 20, "  spaces\tand\nnewlines  ", "</s> end <unk>"]
LABELS = ["cat", "dog", "red car", "house with garden"]
TEMPLATES = ["a photo of a {}.", "This is a photo of {}.", "{c}"]


def images() -> list[Image.Image]:
    """Odd sizes and every mode the readers meet: RGB, grayscale, RGBA, LA, palette (with and without a
    transparency index)."""
    rng = np.random.default_rng(0)

    def noise(w: int, h: int, channels: int = 3) -> np.ndarray:
        return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)

    palette = Image.fromarray(noise(53, 71)).quantize(32)
    transparent = palette.copy()
    transparent.info["transparency"] = 5
    return [Image.fromarray(noise(97, 61)), Image.fromarray(noise(31, 200)), Image.fromarray(noise(64, 64)),
            Image.fromarray(noise(45, 45)[..., 0], "L"), Image.fromarray(noise(81, 37, 4), "RGBA"),
            Image.fromarray(noise(23, 29, 4), "RGBA").convert("LA"), palette, transparent]


def torch_images(exported, items) -> np.ndarray:
    with torch.no_grad():
        x = torch.stack([exported.eval_tf(to_rgb(im)) for im in items])
        return exported.model.encode_image(x, normalize=True).numpy()


def torch_texts(exported, texts) -> np.ndarray:
    with torch.no_grad():
        return exported.model.encode_text(exported.processor(texts), normalize=True).numpy()


@pytest.fixture(params=["clip", "clippo", "siglip"])
def exported(request):
    return request.getfixturevalue(f"{request.param}_export")


def test_images_match_the_torch_model(exported):
    items = images()
    embedder = Embedder(exported.directory, batch_size=3)  # several onnxruntime calls, a short last batch
    ours = embedder.embed_images(items)
    ref = torch_images(exported, items)
    assert ours.shape == ref.shape == (len(items), exported.model.config.embed_dim)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    assert np.abs(ours - ref).max() < TOL
    # different images give different embeddings: the comparison is not between constants
    assert (np.abs(ref[0] - ref[1]).max()) > 100 * TOL


def test_a_path_decodes_as_the_readers_do(exported, tmp_path):
    """Files (PNG with alpha, palette GIF, JPEG) are composited on white as clipforge.data.decode does."""
    from clipforge.data.decode import DecodeLimits, read_image

    items = images()
    paths = []
    for i, (image, fmt) in enumerate([(items[4], "PNG"), (items[7], "GIF"), (items[0], "JPEG")]):
        paths.append(tmp_path / f"{i}.{fmt.lower()}")
        image.save(paths[-1], fmt)
    embedder = Embedder(exported.directory)
    ref = torch_images(exported, [read_image(p, DecodeLimits()) for p in paths])
    assert np.abs(embedder.embed_images(paths) - ref).max() < TOL
    assert np.abs(embedder.embed_images(str(paths[0])) - ref[:1]).max() < TOL  # one path, not a list


def test_texts_match_the_torch_model(exported):
    embedder = Embedder(exported.directory, batch_size=4)
    ours, ref = embedder.embed_texts(TEXTS), torch_texts(exported, TEXTS)
    assert ours.shape == ref.shape == (len(TEXTS), exported.model.config.embed_dim)
    assert np.abs(ours - ref).max() < TOL
    assert np.abs(embedder.embed_texts(TEXTS[0]) - ref[:1]).max() < TOL  # one string


def test_a_clip_batch_is_cut_after_its_last_end_of_text(clip_export):
    """CLIP's causal tower is exported with a dynamic sequence axis: short texts run on short sequences and give
    the full-context embeddings."""
    embedder = Embedder(clip_export.directory)
    tokens = embedder._tokens(embedder.text_processor, ["a cat", "a dog on a street"], embedder.text_tower)
    assert tokens.shape == (2, 7)  # SOT + 5 ids + EOT for the longer text, not the context of 32
    full = embedder.text_processor.numpy(["a cat", "a dog on a street"])
    np.testing.assert_array_equal(tokens, full[:, :7])
    assert np.abs(embedder.embed_texts(["a cat", "a dog on a street"])
                  - torch_texts(clip_export, ["a cat", "a dog on a street"])).max() < TOL


def test_classify_follows_the_scoring(exported):
    embedder = Embedder(exported.directory)
    image = images()[0]
    eval_model = EvalModel(exported.model, exported.eval_tf, exported.processor)
    weights = build_classifier(eval_model, LABELS, TEMPLATES, use_cache=False)  # (D, L)
    with torch.no_grad():
        sims = eval_model.encode_images(exported.eval_tf(image)[None]) @ weights
        ref = eval_model.probabilities(sims)[0].numpy()
    assert np.abs(embedder.classifier(LABELS, TEMPLATES) - weights.T.numpy()).max() < TOL
    result = embedder.classify(image, LABELS, TEMPLATES)
    assert [label for label, _ in result] == [LABELS[i] for i in np.argsort(-ref, kind="stable")]
    probs = dict(result)
    np.testing.assert_allclose([probs[label] for label in LABELS], ref, atol=1e-5)
    cos = embedder.embed_images([image]) @ embedder.classifier(LABELS, TEMPLATES).T
    logits = embedder.logit_scale * cos[0] + embedder.logit_bias
    if exported.model.config.scoring == "sigmoid":  # each label on its own: σ(scale · cos + bias)
        np.testing.assert_allclose([probs[label] for label in LABELS], 1 / (1 + np.exp(-logits)), rtol=1e-6)
        assert embedder.logit_bias == pytest.approx(-1.0)
    else:  # a softmax over the labels
        np.testing.assert_allclose(sum(probs.values()), 1.0, rtol=1e-9)
        np.testing.assert_allclose([probs[label] for label in LABELS], np.exp(logits) / np.exp(logits).sum(),
                                   rtol=1e-6)
    assert np.ptp(ref) > 1e-3  # the probabilities differ between labels, so the order above means something


def test_default_template_and_scale(clip_export):
    embedder = Embedder(clip_export.directory)
    assert embedder.logit_scale == pytest.approx(float(clip_export.model.scale().detach()))
    assert embedder.logit_bias == 0.0 and embedder.scoring == "softmax" and embedder.family == "clip"
    one = dict(embedder.classify(images()[2], ["cat", "dog"]))
    two = dict(embedder.classify(images()[2], ["cat", "dog"], ["a photo of a {}."]))
    assert one == pytest.approx(two)
    with pytest.raises(ValueError, match="repeated label"):
        embedder.classify(images()[2], ["cat", "cat"])
    with pytest.raises(ValueError, match="no \\{\\}"):
        embedder.classify(images()[2], ["cat"], ["a photo"])


def test_siglip_tokens_are_the_torch_tokenizers(siglip_export):
    embedder = Embedder(siglip_export.directory)
    np.testing.assert_array_equal(embedder.text_processor.numpy(TEXTS), siglip_export.processor(TEXTS).numpy())
    assert embedder.text_tower.shape[-1] == siglip_export.model.config.text.context_length  # fixed: pads are read


def test_unit_norm_matches_torch_normalize():
    from clipforge.deploy import l2_normalize

    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    x[2] = 0.0
    np.testing.assert_allclose(l2_normalize(x), F.normalize(torch.from_numpy(x), dim=-1).numpy(), atol=1e-7)
