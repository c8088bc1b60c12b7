"""Zero-shot scoring by the model's family: sigmoid per label for SigLIP, softmax over labels for CLIP."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipforge
from clipforge.cli.main import main
from clipforge.eval import EvalModel, build_classifier
from clipforge.eval.prompts import load_templates


def eval_model(name: str, **overrides: object) -> EvalModel:
    torch.manual_seed(0)
    model = clipforge.create_model(name, **overrides)
    _, eval_tf = clipforge.create_model_and_transforms(name, **overrides)[1:]
    return EvalModel(model, eval_tf, clipforge.get_text_processor(model))


def test_siglip_probabilities_are_sigmoids_of_scaled_and_biased_similarities() -> None:
    m = eval_model("siglip-tiny")
    with torch.no_grad():
        m.model.logit_scale.fill_(math.log(150.0))  # above CLIP's clamp at 100: SigLIP's scale is not clamped
        m.model.logit_bias.fill_(-3.0)
    cos = torch.tensor([[0.10, 0.02, -0.05], [0.0, 0.03, 0.04]])
    probs = m.probabilities(cos)
    assert torch.allclose(probs, torch.sigmoid(150.0 * cos - 3.0), atol=1e-6)
    assert not torch.allclose(probs.sum(dim=-1), torch.ones(2))  # each label on its own
    assert m.scoring == "sigmoid" and m.logit_scale() == pytest.approx(150.0, rel=1e-5)


def test_clip_probabilities_are_a_softmax_over_labels_with_the_clamped_scale() -> None:
    m = eval_model("tiny-vit")
    with torch.no_grad():
        m.model.logit_scale.fill_(math.log(150.0))
    cos = torch.tensor([[0.10, 0.02, -0.05]])
    assert torch.allclose(m.probabilities(cos), F.softmax(100.0 * cos, dim=-1), atol=1e-6)
    assert m.scoring == "softmax"


def test_scoring_is_config_data_a_clip_trained_with_the_sigmoid_loss_can_use_it() -> None:
    m = eval_model("tiny-vit", scoring="sigmoid", init_logit_bias=-10.0)
    cos = torch.tensor([[0.5, -0.5]])
    assert torch.allclose(m.probabilities(cos), torch.sigmoid(m.logit_scale() * cos - 10.0), atol=1e-6)


def test_siglip_template_set() -> None:
    assert load_templates("siglip") == ["This is a photo of {}."]


def test_classify_prints_sigmoid_probabilities_for_a_siglip_model(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model = eval_model("siglip-tiny")
    with torch.no_grad():  # a scale and bias that make the probabilities readable at two decimals
        model.model.logit_scale.fill_(math.log(4.0))
        model.model.logit_bias.fill_(0.0)
    directory = tmp_path / "siglip"
    from clipforge.checkpoints.native import save_pretrained

    save_pretrained(model.model, directory)
    image = tmp_path / "red.png"
    Image.new("RGB", (80, 80), (200, 30, 30)).save(image)
    labels = ["cat", "dog", "car"]
    assert main(["classify", str(image), "--labels", ",".join(labels), "--model", str(directory), "--device", "cpu",
                 "--templates", "siglip"]) == 0
    out = capsys.readouterr().out
    printed = {label: float(p) / 100 for p, label in re.findall(r"^\s+([\d.]+)%\s+(\S+)$", out, re.M)}
    weights = build_classifier(model, labels, load_templates("siglip"), use_cache=False)
    x = model.transform(Image.open(image).convert("RGB"))[None]
    expected = torch.sigmoid(4.0 * model.encode_images(x) @ weights)[0]
    assert set(printed) == set(labels)
    for label, p in zip(labels, expected.tolist()):
        assert printed[label] == pytest.approx(p, abs=6e-5)
    assert sum(printed.values()) != pytest.approx(1.0, abs=1e-3)
