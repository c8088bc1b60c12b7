"""Foreign checkpoints: OpenAI TorchScript archives read without running them, format detection, shape
inference, the pickle/JIT opt-ins, clear errors, ``convert`` and the ``convert`` verb.

The TorchScript files are written here: an OpenAI-layout model (open_clip's ``CLIP``, which keeps OpenAI's
module names) with random weights, ``torch.jit.script``-ed and saved, as OpenAI released theirs.
"""

from __future__ import annotations

import argparse
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.checkpoints import CheckpointError, convert, detect_format, load_any
from clipforge.checkpoints.openai import config_from_openai_state_dict, read_torchscript, to_openai_keys
from clipforge.cli.convert import register
from clipforge.models.factory import build_config

open_clip = pytest.importorskip("open_clip")
from open_clip.model import CLIP as OpenCLIP  # noqa: E402
from open_clip.model import CLIPTextCfg, CLIPVisionCfg  # noqa: E402

TOL = 1e-5
TEXT = CLIPTextCfg(context_length=16, vocab_size=49408, width=64, heads=1, layers=1)
VISION = {
    "vit": CLIPVisionCfg(image_size=32, patch_size=8, width=128, layers=2, head_width=64),
    "rn": CLIPVisionCfg(image_size=64, layers=(1, 1, 2, 1), width=16, head_width=64),
}
OPENAI_PRESETS = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336"]


def openai_layout_model(kind: str, seed: int = 0) -> OpenCLIP:
    """A random OpenAI-layout CLIP (QuickGELU), every tensor perturbed away from its initial value."""
    torch.manual_seed(seed)
    model = OpenCLIP(embed_dim=32, vision_cfg=VISION[kind], text_cfg=TEXT, quick_gelu=True)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and name not in ("logit_scale", "attn_mask"):
                tensor.add_(0.02 * torch.randn_like(tensor)) if "running_var" not in name else tensor.uniform_(0.5, 2)
    return model.eval()


def save_torchscript(model: OpenCLIP, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, and still what OpenAI shipped
        torch.jit.script(model).save(str(path))
    return path


def assert_parity(reference: OpenCLIP, model: torch.nn.Module, image_size: int) -> None:
    images = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    tokens = open_clip.tokenize(["a cat", "a photo of two dogs", ""], context_length=TEXT.context_length)
    with torch.no_grad():
        assert (model.encode_image(images) - reference.encode_image(images)).abs().max() <= TOL
        assert (model.encode_text(tokens) - reference.encode_text(tokens)).abs().max() <= TOL


@pytest.fixture(scope="module")
def torchscript_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[OpenCLIP, Path]]:
    directory = tmp_path_factory.mktemp("openai")
    return {kind: (model := openai_layout_model(kind), save_torchscript(model, directory / f"{kind}.pt"))
            for kind in VISION}


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_torchscript_archive_is_read_without_running_it(kind: str, torchscript_files: dict) -> None:
    reference, path = torchscript_files[kind]
    assert detect_format(path) == "openai"
    state = read_torchscript(path)
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key
    model = load_any(path)
    assert model.config.act == "quick_gelu"
    assert_parity(reference, model, VISION[kind].image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        jit = load_any(path, allow_jit=True)  # the opt-in path agrees exactly
    for key, value in model.state_dict().items():
        assert torch.equal(jit.state_dict()[key], value), key
    loaded, _, tokenizer = clipforge.load(path, precision="bf16")  # the public entry point, other precisions
    assert loaded.text.proj.dtype == torch.bfloat16 and tokenizer(["a cat"]).shape == (1, TEXT.context_length)


def test_torchscript_reader_refuses_foreign_globals(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
        zf.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    assert detect_format(path) == "openai"
    with pytest.raises(CheckpointError, match=r"refusing to load global (posix|os|nt)\.system"):
        load_any(path)
    assert not marker.exists()


def test_plain_state_dicts_need_the_pickle_opt_in(tmp_path: Path) -> None:
    reference = openai_layout_model("vit", seed=1)
    state = dict(reference.state_dict())
    # OpenAI's JIT models carried these three as tensors; build_model drops them, and so do we.
    state |= {"input_resolution": torch.tensor(32), "context_length": torch.tensor(16),
              "vocab_size": torch.tensor(49408)}
    path = tmp_path / "ViT-tiny.pt"
    torch.save(state, path)
    assert detect_format(path) == "open_clip"  # recognised by name only: nothing is unpickled to detect it
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        load_any(path, fmt="openai")
    model = load_any(path, fmt="openai", allow_pickle=True)
    assert model.config.act == "quick_gelu"
    assert_parity(reference, model, 32)
    # The same tensors as safetensors need no opt-in.
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "tiny.safetensors")
    assert detect_format(tmp_path / "tiny.safetensors") == "open_clip"
    assert_parity(reference, load_any(tmp_path / "tiny.safetensors", act="quick_gelu"), 32)


@pytest.mark.parametrize("name", OPENAI_PRESETS)
def test_shape_inference_recovers_every_openai_model(name: str) -> None:
    """build_model's rules give back each OpenAI preset from its tensor shapes alone (meta tensors)."""
    with torch.device("meta"):
        model = clipforge.create_model(name)
    state = to_openai_keys(model.state_dict(), model.config)
    assert config_from_openai_state_dict(state) == model.config


@pytest.mark.parametrize(("name", "act"), [("ViT-H/14", "gelu"), ("ViT-g/14", "gelu"), ("ViT-bigG/14", "gelu"),
                                         ("RN50", "quick_gelu"), ("ViT-B/16", "quick_gelu")])
def test_open_clip_files_without_a_config_take_a_matching_presets_heads_and_act(name: str, act: str) -> None:
    """ViT-H/14 has 16 heads of 80 and ViT-g/14 16 of 88, which width // 64 would miss; the act is a guess."""
    from clipforge.checkpoints.open_clip import config_from_state_dict

    with torch.device("meta"):
        model = clipforge.create_model(name)
    state = to_openai_keys(model.state_dict(), model.config)
    with pytest.warns(UserWarning, match=f"guessed '{act}'"):
        assert config_from_state_dict(state) == model.config
    assert config_from_state_dict(state, act="gelu").act == "gelu"


def test_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="unknown checkpoint format; known formats: clipforge, openai, "
                                              "open_clip, hf, big_vision"):
        load_any(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'onnx'; known formats"):
        load_any(tmp_path / "notes.txt", fmt="onnx")
    with pytest.raises(CheckpointError, match="unknown output format 'tflite'; known formats: clipforge, hf"):
        convert(tmp_path / "notes.txt", tmp_path / "out", to="tflite")
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in openai_layout_model("vit").state_dict().items()}
    bad = dict(state, **{"transformer.resblocks.0.ln_1.weight": torch.ones(65)})
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: 'text\.transformer\.blocks\.0\.ln_1\.weight' "
                                              r"has shape \(65,\), the model expects \(64,\)"):
        load_any(tmp_path / "bad.safetensors", act="quick_gelu")
    missing = {k: v for k, v in state.items() if k != "visual.ln_post.bias"}
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"missing\.safetensors: missing key 'visual\.ln_post\.bias'"):
        load_any(tmp_path / "missing.safetensors", act="quick_gelu")
    save_file(dict(state, extra=torch.zeros(2)), tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match=r"extra\.safetensors: unexpected key 'extra'"):
        load_any(tmp_path / "extra.safetensors", act="quick_gelu")


def test_convert_verb(torchscript_files: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser(prog="clipforge")
    register(parser.add_subparsers(dest="verb"))
    reference, path = torchscript_files["vit"]
    args = parser.parse_args(["convert", str(path), str(tmp_path / "native"), "--to", "clipforge", "--from", "openai"])
    assert args.func(args) == 0 and "wrote" in capsys.readouterr().out
    model = load_any(tmp_path / "native")
    assert_parity(reference, model, 32)
    for to, dst in (("hf", "hf"), ("open_clip", "oc.safetensors")):
        args = parser.parse_args(["convert", str(tmp_path / "native"), str(tmp_path / dst), "--to", to])
        assert args.func(args) == 0
        again = load_any(tmp_path / dst, act="quick_gelu")
        for key, value in model.state_dict().items():
            assert torch.equal(again.state_dict()[key], value), (to, key)
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", "a", "b", "--to", "onnx"])
    rn = parser.parse_args(["convert", str(torchscript_files["rn"][1]), str(tmp_path / "rn-hf"), "--to", "hf"])
    with pytest.raises(CheckpointError, match="no ResNet CLIP"):
        rn.func(rn)


def test_fp16_archive_like_openai_releases(tmp_path: Path) -> None:
    """OpenAI's archives hold fp16 storages (HalfStorage); they load as fp32 (the default) or fp16, unchanged."""
    reference = openai_layout_model("rn", seed=2).half()
    path = save_torchscript(reference, tmp_path / "half.pt")
    fp32, fp16 = load_any(path), load_any(path, precision="fp16")
    as_fp32 = to_openai_keys(fp32.state_dict(), fp32.config)
    for key, value in to_openai_keys(fp16.state_dict(), fp16.config).items():
        expected = reference.state_dict()[key]
        assert value.dtype == expected.dtype and torch.equal(value, expected), key
        assert torch.equal(as_fp32[key], expected.float() if expected.is_floating_point() else expected), key


@pytest.mark.slow
@pytest.mark.parametrize(("name", "vision"), [
    ("ViT-B/32", CLIPVisionCfg(image_size=224, patch_size=32, width=768, layers=12)),
    ("RN50", CLIPVisionCfg(image_size=224, layers=(3, 4, 6, 3), width=64, patch_size=None)),
])
def test_full_size_torchscript_parity(name: str, vision: CLIPVisionCfg, tmp_path: Path) -> None:
    torch.manual_seed(0)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)
    embed = 512 if name == "ViT-B/32" else 1024
    reference = OpenCLIP(embed_dim=embed, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()
    with torch.no_grad():
        for key, tensor in reference.state_dict().items():
            if tensor.is_floating_point() and key not in ("logit_scale", "attn_mask"):
                tensor.add_(0.02 * torch.randn_like(tensor)) if "running_var" not in key else tensor.uniform_(0.5, 2)
    model = load_any(save_torchscript(reference, tmp_path / "model.pt"))
    assert model.config == build_config(name)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = open_clip.tokenize(["a photo of a cat", "a diagram"])
    with torch.no_grad():
        assert (model.encode_image(images) - reference.encode_image(images)).abs().max() <= TOL
        assert (model.encode_text(tokens) - reference.encode_text(tokens)).abs().max() <= TOL


@pytest.mark.parametrize("to", ["hf", "open_clip"])
def test_a_conv_stem_model_is_refused_by_the_foreign_layouts(tmp_path: Path, to: str) -> None:
    from clipforge.checkpoints.native import save_pretrained

    src = save_pretrained(clipforge.create_model("tiny-vit", vision={"stem": "conv"}), tmp_path / "model")
    with pytest.raises(CheckpointError, match="stem='conv'"):
        convert(src, tmp_path / "out", to=to)
