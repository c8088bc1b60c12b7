"""A released SigLIP by its hub name, used everywhere clipforge uses a model: load, zero-shot classify (sigmoid),
evaluation, conversion and fine-tuning, all from a Hugging Face cache in huggingface_hub's layout, network off.

The repository ``google/siglip-base-patch16-224`` is written by transformers itself (a tiny random ``SiglipModel``
and a SentencePiece model trained on the spot), so every reader runs on real reference-format files.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

import clipforge  # noqa: E402
from clipforge.checkpoints import convert  # noqa: E402
from clipforge.cli.main import main  # noqa: E402
from clipforge.train import Runtime, load_config, parse_overrides, prepare, train  # noqa: E402
from helpers.hub_cache import add_directory, offline_hub  # noqa: E402
from helpers.spm import train_spm, write_hf_tokenizer_config  # noqa: E402

REPO = "google/siglip-base-patch16-224"
NAME = f"hf-hub:{REPO}"


@pytest.fixture
def cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> transformers.SiglipModel:
    """The tiny SigLIP, cached under ``REPO`` with its tokenizer files; returns transformers' model."""
    cache = offline_hub(monkeypatch, tmp_path / "hf")
    repo = tmp_path / "repo"
    spm = train_spm(repo, style="siglip")
    write_hf_tokenizer_config(repo, "siglip")
    import sentencepiece

    vocab = sentencepiece.SentencePieceProcessor(model_file=str(spm)).get_piece_size()
    torch.manual_seed(0)
    config = transformers.SiglipConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 16, "vocab_size": vocab, "pad_token_id": 1, "eos_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8})
    reference = transformers.SiglipModel(config).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.02 * torch.randn_like(p))
        reference.logit_scale.fill_(math.log(3.0))
        reference.logit_bias.fill_(0.5)
    reference.save_pretrained(repo)
    add_directory(cache, REPO, repo)
    return reference


def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(torch.randint(0, 255, (40, 48, 3), dtype=torch.uint8,
                                  generator=torch.Generator().manual_seed(1)).numpy()).save(path)
    return path


def test_load_by_hub_name_equals_transformers(cached: transformers.SiglipModel, tmp_path: Path) -> None:
    model, eval_tf, tokenizer = clipforge.load(NAME)
    assert model.config.family == "siglip" and model.config.scoring == "sigmoid"
    texts = ["This is a photo of a cat.", "two dogs", ""]
    tokens = tokenizer(texts)
    hf_tokens = transformers.SiglipTokenizer(str(next((tmp_path / "repo").glob("spiece.model"))))(
        texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(tokens, hf_tokens)
    images = torch.stack([eval_tf(Image.open(image_file(tmp_path)).convert("RGB"))])
    with torch.no_grad():
        ref = cached(input_ids=tokens, pixel_values=images)
        out = model(images, tokens)
    logits = out.logit_scale * out.image_features @ out.text_features.T + out.logit_bias
    assert (logits - ref.logits_per_image).abs().max() < 1e-5
    assert torch.equal(clipforge.get_tokenizer(NAME)(texts), tokens)


def test_classify_and_eval_take_the_hub_name(cached: transformers.SiglipModel, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    photo = image_file(tmp_path)
    assert main(["classify", str(photo), "--labels", "cat,dog", "--model", NAME, "--templates", "siglip",
                 "--device", "cpu"]) == 0
    printed = [float(p) / 100 for p in re.findall(r"^\s+([\d.]+)%\s+\S+$", capsys.readouterr().out, re.M)]
    model, eval_tf, tokenizer = clipforge.load(NAME)
    with torch.no_grad():
        image = model.encode_image(eval_tf(Image.open(photo).convert("RGB"))[None], normalize=True)
        text = model.encode_text(tokenizer(["This is a photo of cat.", "This is a photo of dog."]), normalize=True)
        expected = torch.sigmoid(model.scale() * image @ text.T + model.logit_bias)[0]
    assert sorted(printed) == pytest.approx(sorted(expected.tolist()), abs=6e-5)  # sigmoids: no sum to one

    folder = tmp_path / "classes"
    for i, label in enumerate(["cat", "dog"]):
        (folder / label).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (36, 36), (40 + 100 * i, 20 * j, 90)).save(folder / label / f"{j}.png")
    output = tmp_path / "zeroshot.json"
    assert main(["eval", "zeroshot", "--model", NAME, "--data", str(folder), "--templates", "siglip",
                 "--output", str(output), "--device", "cpu"]) == 0
    result = json.loads(output.read_text())
    assert 0.0 <= result["metrics"]["acc1"] <= 1.0


def test_convert_from_the_hub_name_keeps_weights_and_tokenizer(cached: transformers.SiglipModel,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "converted"
    assert main(["convert", NAME, str(out), "--to", "clipforge"]) == 0
    assert (out / "spiece.model").is_file()
    again, _, tokenizer = clipforge.load(out)
    original, _, original_tokenizer = clipforge.load(NAME)
    for key, value in original.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert torch.equal(tokenizer(["a red car"]), original_tokenizer(["a red car"]))
    hf_out = convert(NAME, tmp_path / "hf", to="hf")
    assert transformers.SiglipModel.from_pretrained(hf_out).config.model_type == "siglip"


def test_fine_tuning_starts_from_the_hub_name(cached: transformers.SiglipModel, tmp_path: Path,
                                              one_thread: None) -> None:
    config = load_config(None, parse_overrides([
        f"model={NAME}", "loss=siglip", "data.train_size=200", "eval.size=8", "eval.retrieval_size=4",
        "schedule.warmup_steps=1", "steps=2", "batch_size=8", "log_every=1", "plots=false",
        f"output_dir={tmp_path / 'run'}"]))
    prepared = prepare(config)
    assert prepared.model_config.family == "siglip" and prepared.start is not None
    train(config, Runtime())
    final = tmp_path / "run" / "final"
    assert (final / "spiece.model").is_file()  # the run's model keeps the checkpoint's tokenizer
    tuned, _, _ = clipforge.load(final)
    start = clipforge.load(NAME)[0]
    assert any(not torch.equal(v, tuned.state_dict()[k]) for k, v in start.state_dict().items())
    # Released weights keep their text processor: only the context may change (longer, by resizing the positions).
    with pytest.raises(clipforge.ConfigError, match="brings its own text processor"):
        prepare(load_config(None, parse_overrides([f"model={NAME}", "model_overrides.text.heads=1",
                                                   "loss=siglip"])))
    with pytest.raises(clipforge.ConfigError, match="model_overrides.text.context_length"):
        prepare(load_config(None, parse_overrides([f"model={NAME}", "model_overrides.text.context_length=8",
                                                   "loss=siglip"])))
