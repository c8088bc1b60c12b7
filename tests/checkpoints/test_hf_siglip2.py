"""Parity with Hugging Face transformers' ``Siglip2Model`` (SigLIP 2 NaFlex): its own random models and image
processor, saved with ``save_pretrained``, read by clipforge (features equal for a padded batch of images of several
aspect ratios, and for text); clipforge NaFlex models exported and loaded back by ``Siglip2Model.from_pretrained``
and ``Siglip2ImageProcessor.from_pretrained``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from clipforge.checkpoints.hf_siglip2 import (  # noqa: E402
    config_from_hf_siglip2,
    hf_siglip2_config,
    load_hf_siglip2,
    save_hf_siglip2,
)
from clipforge.checkpoints.native import CheckpointError  # noqa: E402
from clipforge.config import ConfigError  # noqa: E402
from clipforge.models.factory import build_config, build_model  # noqa: E402
from clipforge.models.naflex import NaFlexBatch  # noqa: E402
from clipforge.transforms import NaFlexTransform, model_transforms  # noqa: E402

TOL = 1e-5
BUDGET = 32
# Width 64, 2 layers, 8-px patches, a 4 × 4 position grid; three heads and exact GELU in the image tower beside
# tanh-GELU text, and a text tower narrower than the image one (projected to its width).
TEXT = {"vocab_size": 100, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 3, "max_position_embeddings": 16, "projection_size": 64, "bos_token_id": 2,
        "eos_token_id": 1, "pad_token_id": 0}
VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "patch_size": 8, "num_patches": 16, "hidden_act": "gelu"}
SIZES = [(40, 300), (300, 40), (64, 64), (5, 7), (640, 480), (33, 71)]  # tall, wide, square, tiny, large, odd


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


def reference_model(seed: int = 0) -> Any:
    """A transformers ``Siglip2Model`` with every tensor randomised (no LayerNorm left at 1/0)."""
    torch.manual_seed(seed)
    model = transformers.Siglip2Model(transformers.Siglip2Config(text_config=TEXT, vision_config=VISION))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.vision_model.embeddings.position_embedding.weight.normal_()
        model.logit_scale.fill_(math.log(12.5))
        model.logit_bias.fill_(-6.25)
    return model.eval()


def processor(**kwargs: Any) -> Any:
    return transformers.Siglip2ImageProcessor(patch_size=8, max_num_patches=BUDGET, **kwargs)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("siglip2")
    reference_model().save_pretrained(directory)
    processor().save_pretrained(directory)
    return directory


def image_features(reference: Any, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        out = reference.get_image_features(**batch)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def text_features(reference: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = reference.get_text_features(input_ids=ids)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_siglip2_directory_loads_with_parity(hf_dir: Path) -> None:
    config, state = load_hf_siglip2(hf_dir)
    v = config.vision
    assert (v.naflex, v.max_num_patches, v.image_size, v.patch_size, v.act, config.act) == \
        (True, BUDGET, 32, 8, "gelu", "gelu_tanh")
    assert (config.embed_dim, config.text.width, config.tokenizer["style"]) == (64, 48, "gemma")
    model = build_model(config).eval()
    model.load_state_dict(state)
    reference = transformers.Siglip2Model.from_pretrained(hf_dir).eval()
    hf_batch = processor()(images=images(), return_tensors="pt")
    _, transform = model_transforms(config)
    batch = torch.stack([transform(im) for im in images()])
    torch.testing.assert_close(batch.patches, hf_batch["pixel_values"], atol=1e-6, rtol=0)
    assert torch.equal(batch.mask, hf_batch["pixel_attention_mask"].bool())
    assert torch.equal(batch.spatial_shapes, hf_batch["spatial_shapes"])
    assert not batch.mask.all()  # padding is there, and is masked
    expected = image_features(reference, hf_batch)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(batch), expected, atol=TOL, rtol=TOL)
        ids = torch.randint(0, 100, (4, 16), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(model.encode_text(ids), text_features(reference, ids), atol=TOL, rtol=TOL)
        out = model(batch, ids)
        logits = out.logit_scale * out.image_features @ out.text_features.T + out.logit_bias
        hf_out = reference(input_ids=ids, **hf_batch)
        torch.testing.assert_close(logits, hf_out.logits_per_image, atol=TOL, rtol=TOL)


def test_export_loads_in_transformers_with_its_image_processor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = build_config({**_tiny_naflex(), "std": [0.25, 0.5, 0.75], "max_logit_scale": math.log(5.0)})
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_hf_siglip2(model, tmp_path)
    reference = transformers.Siglip2Model.from_pretrained(tmp_path).eval()
    hf_processor = transformers.Siglip2ImageProcessor.from_pretrained(tmp_path)
    assert (hf_processor.max_num_patches, hf_processor.patch_size, list(hf_processor.image_std)) == \
        (BUDGET, 8, [0.25, 0.5, 0.75])
    hf_batch = hf_processor(images=images(), return_tensors="pt")
    transform = NaFlexTransform(8, BUDGET, config.mean, config.std)
    batch = torch.stack([transform(im) for im in images()])
    torch.testing.assert_close(batch.patches, hf_batch["pixel_values"], atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(image_features(reference, hf_batch), model.encode_image(batch), atol=TOL,
                                   rtol=TOL)
        ids = torch.randint(0, 100, (3, 16))
        torch.testing.assert_close(text_features(reference, ids), model.encode_text(ids), atol=TOL, rtol=TOL)
    assert float(reference.logit_scale.detach().exp()) == pytest.approx(5.0)  # written clamped: HF does not clamp
    # And back: the exported directory reads as the model it came from.
    config_back, state = load_hf_siglip2(tmp_path)
    assert config_back.vision == config.vision and config_back.std == config.std
    for key, value in model.state_dict().items():
        if key != "logit_scale":
            assert torch.equal(state[key], value), key


def _tiny_naflex() -> dict[str, Any]:
    return {"family": "siglip", "embed_dim": 64, "tokenizer": {"kind": "bpe"},
            "vision": {"kind": "vit", "image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 4,
                       "mlp_ratio": 2.0, "pool": "map", "class_token": False, "ln_pre": False, "patch_bias": True,
                       "proj": False, "naflex": True, "max_num_patches": BUDGET},
            "text": {"vocab_size": 100, "context_length": 16, "width": 64, "layers": 2, "heads": 4, "mlp_ratio": 2.0,
                     "causal": False, "pool": "last", "proj_bias": True}}


def test_released_config_fields_and_processor_defaults() -> None:
    """A config.json as google/siglip2-base-patch16-naflex spells it, with and without its preprocessor file."""
    hf = {"model_type": "siglip2", "text_config": {"vocab_size": 256000, "model_type": "siglip2_text_model"},
          "vision_config": {"model_type": "siglip2_vision_model", "num_patches": 256}}
    config = config_from_hf_siglip2(hf)
    assert config == build_config("SigLIP2-B/16-naflex")
    assert hf_siglip2_config(config)["vision_config"]["num_patches"] == 256
    config = config_from_hf_siglip2(hf, processor={"max_num_patches": 1024, "patch_size": 16, "image_mean": 0.5})
    assert (config.vision.max_num_patches, config.mean) == (1024, (0.5, 0.5, 0.5))


@pytest.mark.parametrize(("vision", "processor_fields", "error", "match"), [
    ({"num_patches": 200}, {}, CheckpointError, r"num_patches=200: expected a square number"),
    ({"vision_use_head": False}, {}, CheckpointError, r"vision_use_head must be true"),
    ({"patch_size": [8, 16]}, {}, CheckpointError, r"patch_size=\[8, 16\].*square"),
    ({}, {"patch_size": 14}, CheckpointError, r"preprocessor_config.json: patch_size=14 differs"),
    ({}, {"max_num_patches": 0}, ConfigError, r"preprocessor_config.json.*max_num_patches: must be positive"),
    ({}, {"image_mean": ["a", "b", "c"]}, ConfigError, r"preprocessor_config.json.*mean"),
])
def test_what_clipforge_cannot_hold_is_a_clear_error(vision: dict[str, Any], processor_fields: dict[str, Any],
                                                     error: type[Exception], match: str) -> None:
    hf = {"model_type": "siglip2", "text_config": TEXT, "vision_config": {**VISION, **vision}}
    with pytest.raises(error, match=match):
        config_from_hf_siglip2(hf, "dir/config.json", processor={"patch_size": 8, **processor_fields})


def test_export_refuses_a_fixed_resolution_model_and_loading_names_the_directory(tmp_path: Path) -> None:
    fixed = build_model(build_config(_tiny_naflex(), **{"vision.naflex": False}))
    with pytest.raises(CheckpointError, match="NaFlex image tower"):
        save_hf_siglip2(fixed, tmp_path / "out")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(CheckpointError, match=r"not an HF SigLIP 2 NaFlex directory"):
        load_hf_siglip2(tmp_path)


def test_misshapen_weights_name_the_key(hf_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((hf_dir / name).read_bytes())
    state = load_file(hf_dir / "model.safetensors")
    state["vision_model.embeddings.patch_embedding.weight"] = torch.zeros(64, 191)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"patch_embedding.weight' has shape \(64, 191\).*\(64, 192\)"):
        load_hf_siglip2(tmp_path)


def test_padded_batches_from_transformers_and_clipforge_agree_one_image_at_a_time(hf_dir: Path) -> None:
    """Each image alone (HF: its own batch of one) gets the features it gets in the padded batch."""
    config, state = load_hf_siglip2(hf_dir)
    model = build_model(config).eval()
    model.load_state_dict(state)
    reference = transformers.Siglip2Model.from_pretrained(hf_dir).eval()
    transform = NaFlexTransform(8, BUDGET, config.mean, config.std)
    items = [transform(im) for im in images()]
    with torch.no_grad():
        together = model.encode_image(torch.stack(items))
        for i, im in enumerate(images()):
            alone = image_features(reference, processor()(images=[im], return_tensors="pt"))
            torch.testing.assert_close(together[i:i + 1], alone, atol=TOL, rtol=TOL)
            one = items[i]
            n = int(one.mask.sum())
            unpadded = NaFlexBatch(one.patches[None, :n], one.mask[None, :n], one.spatial_shapes[None])
            torch.testing.assert_close(model.encode_image(unpadded), alone, atol=TOL, rtol=TOL)


def test_load_any_and_a_round_trip_through_the_native_format(hf_dir: Path, tmp_path: Path) -> None:
    """``load_any`` dispatches ``model_type`` siglip2 here; HF → clipforge → HF keeps the features and the budget."""
    from clipforge.checkpoints import detect_format, load_any
    from clipforge.checkpoints.native import save_pretrained

    assert detect_format(hf_dir) == "hf"
    model = load_any(hf_dir).eval()
    assert model.config.vision.naflex and model.config.vision.max_num_patches == BUDGET
    native = load_any(save_pretrained(model, tmp_path / "native")).eval()
    assert native.config == model.config
    back = save_hf_siglip2(native, tmp_path / "hf")
    reference = transformers.Siglip2Model.from_pretrained(back).eval()
    hf_batch = transformers.Siglip2ImageProcessor.from_pretrained(back)(images=images(), return_tensors="pt")
    assert hf_batch["pixel_values"].shape[1] == BUDGET
    transform = model_transforms(native.config)[1]
    with torch.no_grad():
        ours = model.encode_image(torch.stack([transform(im) for im in images()]))
        torch.testing.assert_close(image_features(reference, hf_batch), ours, atol=TOL, rtol=TOL)
