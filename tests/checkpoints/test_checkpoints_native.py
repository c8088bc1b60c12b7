"""clipforge's own model directories: exact round trips, precision, clear errors, ``clipforge.load``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import clipforge
from clipforge.checkpoints import detect_format, load_any
from clipforge.checkpoints.native import load_model, save_pretrained


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn", "clippo-tiny", "clippo-tiny-rn"])
def test_round_trip_is_exact(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = clipforge.create_model(name, embed_dim=64)
    save_pretrained(model, tmp_path / "m")
    assert detect_format(tmp_path / "m") == "clipforge"
    again = load_model(tmp_path / "m")
    assert again.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    loaded, eval_tf, processor = clipforge.load(tmp_path / "m")
    assert not loaded.training
    from PIL import Image

    image = eval_tf(Image.new("RGB", (70, 50), "red"))[None]
    with torch.no_grad():
        model.eval()
        text = processor(["a red square"])
        assert torch.equal(model(image, text).image_features, loaded(image, text).image_features)


def test_precision_and_bad_directories(tmp_path: Path) -> None:
    model = clipforge.create_model("tiny-vit")
    save_pretrained(model, tmp_path / "m")
    assert load_model(tmp_path / "m", precision="bf16").visual.proj.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        load_model(tmp_path / "m", precision="fp8")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        clipforge.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        load_any(tmp_path / "empty")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model"]["vision"]["widht"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: .*unknown field 'widht'"):
        load_model(tmp_path / "m")


def test_shape_mismatch_names_the_key(tmp_path: Path) -> None:
    save_pretrained(clipforge.create_model("tiny-vit"), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model"]["embed_dim"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'text.proj' has shape \(128, 128\), the model expects \(128, 64\)"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(tmp_path / "m")


def test_big_vision_npz_loads_through_clipforge_load(tmp_path: Path) -> None:
    from clipforge.checkpoints.big_vision import save_big_vision

    model = clipforge.create_model("clippo-tiny")
    save_big_vision(model, tmp_path / "clippo.npz")
    loaded, _, _ = clipforge.load(tmp_path / "clippo.npz")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert np.load(tmp_path / "clippo.npz")["params/t"].shape == ()
    with pytest.raises(ValueError, match="CLIPPO model with a ResNet tower cannot be exported"):
        save_big_vision(clipforge.create_model("clippo-tiny-rn"), tmp_path / "rn.npz")
    assert not (tmp_path / "rn.npz").exists()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("vision.layers", 10**9, "parameters, over the limit"),
    ("text.vocab_size", 10**12, "text token embedding"),
    ("vision.image_size", 64 * 2000, "parameters, over the limit"),
    ("vision.width", 2**64, "out of range"),
    ("vision.kind", ["vit"], "vision.kind: expected one of"),
])
def test_a_model_directory_whose_config_allocates_the_world_is_refused_before_its_weights_are_read(
        tmp_path: Path, field: str, value: object, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import clipforge.checkpoints.native as native

    save_pretrained(clipforge.create_model("tiny-vit"), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    section, name = field.split(".")
    config["model"][section][name] = value
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))

    def never(path: Path) -> None:
        raise AssertionError("the weights were read")

    monkeypatch.setattr(native, "read_safetensors", never)
    with pytest.raises(clipforge.ConfigError, match=rf"config.json: .*{message}"):
        load_any(tmp_path / "m")


def test_an_oversized_config_file_is_refused_unread(tmp_path: Path) -> None:
    from clipforge.config import MAX_FILE_BYTES

    save_pretrained(clipforge.create_model("tiny-vit"), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["padding"] = "x" * MAX_FILE_BYTES
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: .* bytes, more than a config file may hold"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize(("change", "message"), [
    ({"num_hidden_layers": 10**9}, "parameters, over the limit"),
    ({"num_attention_heads": "twelve"}, "config.vision.heads: expected an integer, got str"),
    ({"hidden_size": 1.5}, "intermediate_size and hidden_size must be positive integers"),
    ({"hidden_act": ["gelu"]}, "hidden_act"),
    ({"image_size": 2**70}, "out of range"),
])
def test_a_hostile_hf_config_is_a_config_error(tmp_path: Path, change: dict, message: str) -> None:
    from clipforge.checkpoints.hf import save_hf

    save_hf(clipforge.create_model("tiny-vit"), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["vision_config"].update(change)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_any(tmp_path / "hf")
