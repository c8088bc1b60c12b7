"""Parity with open_clip: its own random models, saved in its own formats, loaded by clipforge's real loaders.

Each reference is ``open_clip.model.CLIP`` (OpenAI layout) with every weight and BatchNorm statistic
perturbed, so no tensor keeps a symmetric initial value that would hide a swapped or transposed mapping.
Token ids come from ``open_clip.tokenize``, so end-of-text positions are realistic.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
from open_clip.model import CLIP as OpenCLIP  # noqa: E402
from open_clip.model import CLIPTextCfg, CLIPVisionCfg  # noqa: E402

from clipforge.checkpoints import convert, detect_format, load_any  # noqa: E402
from clipforge.checkpoints.open_clip import open_clip_model_cfg, save_open_clip  # noqa: E402
from clipforge.models.factory import build_config  # noqa: E402

TOL = 1e-5
CAPTIONS = ["a photo of a cat", "a diagram", "two dogs playing in the snow near a red house", ""]

TINY = {
    "vit": {"embed_dim": 64, "quick_gelu": True,
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 2, "head_width": 64},
            "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}},
    "rn": {"embed_dim": 64, "quick_gelu": True,
           "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 16, "head_width": 64},
           "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}},
}
# OpenAI's ViT-B/32 and RN50 as open_clip writes them (model_configs/*.json, with quick_gelu).
FULL = {
    "ViT-B/32": {"embed_dim": 512, "quick_gelu": True,
                 "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
    "RN50": {"embed_dim": 1024, "quick_gelu": True,
             "vision_cfg": {"image_size": 224, "layers": [3, 4, 6, 3], "width": 64, "patch_size": None},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
}


def reference_model(model_cfg: dict, seed: int = 0) -> OpenCLIP:
    """An open_clip CLIP with every tensor randomised (BatchNorm running stats included)."""
    torch.manual_seed(seed)
    model = OpenCLIP(embed_dim=model_cfg["embed_dim"], vision_cfg=CLIPVisionCfg(**model_cfg["vision_cfg"]),
                     text_cfg=CLIPTextCfg(**model_cfg["text_cfg"]), quick_gelu=model_cfg["quick_gelu"])
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name in ("logit_scale", "attn_mask"):
                continue
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            else:
                tensor.add_(0.02 * torch.randn_like(tensor))
    return model.eval()


def inputs(model_cfg: dict, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    size = model_cfg["vision_cfg"]["image_size"]
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    tokens = open_clip.tokenize(CAPTIONS[:n], context_length=model_cfg["text_cfg"]["context_length"])
    return images, tokens


def assert_parity(reference: OpenCLIP, model: torch.nn.Module, model_cfg: dict) -> None:
    """Image/text embeddings (raw and normalised) and logits agree within ``TOL``."""
    images, tokens = inputs(model_cfg)
    with torch.no_grad():
        ref_img, ref_txt = reference.encode_image(images), reference.encode_text(tokens)
        img, txt = model.encode_image(images), model.encode_text(tokens)
        assert (img - ref_img).abs().max() <= TOL
        assert (txt - ref_txt).abs().max() <= TOL
        ref_img, ref_txt, ref_scale = reference(images, tokens)[:3]
        out = model(images, tokens)
        assert (out.image_features - ref_img).abs().max() <= TOL
        assert (out.text_features - ref_txt).abs().max() <= TOL
        logits = out.logit_scale * out.image_features @ out.text_features.T
        assert (logits - ref_scale * ref_img @ ref_txt.T).abs().max() <= TOL


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_open_clip_files_load_with_parity(kind: str, tmp_path: Path) -> None:
    cfg = TINY[kind]
    reference = reference_model(cfg)
    state = reference.state_dict()
    # The hub layout: open_clip_model.safetensors + open_clip_config.json (activation and heads from the JSON).
    hub = _hub(reference, cfg, tmp_path / "hub")
    assert detect_format(hub) == "open_clip"
    model = load_any(hub)
    assert model.config.act == "quick_gelu" and model.config.text.heads == 1
    assert_parity(reference, model, cfg)
    # A training checkpoint: {"state_dict": {"module." + key: ...}} written by torch.save; needs the pickle opt-in.
    ckpt = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, ckpt)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_any(ckpt, act="quick_gelu")
    model = load_any(ckpt, allow_pickle=True, act="quick_gelu")
    assert_parity(reference, model, cfg)


def test_activation_comes_from_the_config_file_or_is_guessed(tmp_path: Path) -> None:
    cfg = {**TINY["vit"], "quick_gelu": False}
    reference = reference_model(cfg)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(reference.state_dict(), path)
    with pytest.warns(UserWarning, match="guessed 'gelu'"):  # no preset has this shape: open_clip's default
        model = load_any(path, allow_pickle=True)
    assert model.config.act == "gelu"
    # heads are width // 64 without a config file; this reference has 1 text head of 64, so it matches
    assert_parity(reference, model, cfg)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**cfg, "quick_gelu": True}}))
    assert load_any(path, allow_pickle=True).config.act == "quick_gelu"  # the file wins over the guess
    assert load_any(path, allow_pickle=True, act="gelu").config.act == "gelu"  # the caller wins over the file


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_round_trip_through_open_clip_is_exact(kind: str, tmp_path: Path) -> None:
    cfg = TINY[kind]
    model = load_any(_hub(reference_model(cfg, seed=3), cfg, tmp_path / "src"))
    for target in (tmp_path / "out", tmp_path / "out.safetensors", tmp_path / "out.bin"):
        written = save_open_clip(model, target)
        again = load_any(written, allow_pickle=True, act="quick_gelu")
        assert again.config == model.config
        assert_same_weights(model, again)
    # open_clip itself loads the export strictly and computes the same outputs.
    meta = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())
    assert meta["model_cfg"] == open_clip_model_cfg(model.config)
    mc = meta["model_cfg"]
    reloaded = OpenCLIP(embed_dim=mc["embed_dim"], vision_cfg=CLIPVisionCfg(**mc["vision_cfg"]),
                        text_cfg=CLIPTextCfg(**mc["text_cfg"]), quick_gelu=mc["quick_gelu"]).eval()
    from safetensors.torch import load_file

    missing, unexpected = reloaded.load_state_dict(load_file(tmp_path / "out" / "open_clip_model.safetensors"),
                                                   strict=False)
    assert unexpected == [] and set(missing) <= {"attn_mask"}
    assert_parity(reloaded, model, cfg)
    # The same through convert(): clipforge → open_clip → clipforge.
    convert(tmp_path / "out", tmp_path / "native", to="clipforge")
    assert_same_weights(model, load_any(tmp_path / "native"))


def _hub(reference: OpenCLIP, cfg: dict, directory: Path) -> Path:
    """Writes ``reference`` as an open_clip hub directory (safetensors + open_clip_config.json)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in reference.state_dict().items() if k != "attn_mask"}
    save_file(state, directory / "open_clip_model.safetensors")
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_full_size_parity(name: str, tmp_path: Path) -> None:
    cfg = FULL[name]
    reference = reference_model(cfg)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(reference.state_dict(), path)
    model = load_any(path, allow_pickle=True, act="quick_gelu")

    assert model.config == build_config(name)  # the inferred shape is exactly the OpenAI preset
    assert_parity(reference, model, cfg)
    written = save_open_clip(model, tmp_path / "export.safetensors")
    assert_same_weights(model, load_any(written, act="quick_gelu"))
