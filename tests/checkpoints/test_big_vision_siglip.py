"""big_vision SigLIP checkpoints (a ``two_towers`` model's ``.npz``): import and export, checked against independent
readers of the same files.

The readers: open_clip's ``convert.load_big_vision_weights`` (how OpenCLIP converted the released SigLIP ``.npz``
files: both towers, ``t`` and ``b``) into an open_clip ``CustomTextCLIP`` built with big_vision's tanh-GELU and eps
1e-6, and timm's ``vision_transformer._load_weights`` for the image tower. Import is checked on parameter trees
written here in big_vision's layout with random values; export on random clipforge models.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import clipforge
from clipforge.checkpoints import convert, detect_format, load_any
from clipforge.checkpoints.big_vision import BigVisionFormatError, load_big_vision, save_big_vision
from clipforge.checkpoints.big_vision_siglip import released_image_size, tokenizer_for_vocab
from clipforge.checkpoints.native import save_pretrained
from clipforge.config import to_dict
from clipforge.models.factory import build_config

TOL = 1e-5
# Image tower, text tower, embedding: the text tower is narrower than the image tower and projected up to it.
WIDTH, HEADS, LAYERS, PATCH, IMAGE, MLP = 64, 4, 2, 8, 32, 256
TEXT_WIDTH, TEXT_HEADS, TEXT_LAYERS, TEXT_MLP, VOCAB, CONTEXT = 48, 3, 2, 96, 500, 12

SIGLIP_TINY = {
    "family": "siglip", "embed_dim": WIDTH,
    "vision": {"kind": "vit", "image_size": IMAGE, "patch_size": PATCH, "width": WIDTH, "layers": LAYERS,
               "heads": HEADS, "pool": "map", "class_token": False, "ln_pre": False, "patch_bias": True, "proj": False},
    "text": {"vocab_size": VOCAB, "context_length": CONTEXT, "width": TEXT_WIDTH, "heads": TEXT_HEADS,
             "layers": TEXT_LAYERS, "mlp_ratio": TEXT_MLP / TEXT_WIDTH, "causal": False, "pool": "last",
             "proj_bias": True},
}


def random_siglip_arrays(seed: int = 0, scan: bool = False) -> dict[str, np.ndarray]:
    """A two-towers SigLIP parameter tree in big_vision's flattened layout (``params/...``), random values."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.normal(0, 0.1, shape).astype(np.float32)
    a: dict[str, np.ndarray] = {}

    def ln(prefix: str, width: int) -> None:
        a[prefix + "scale"], a[prefix + "bias"] = 1 + r(width), r(width)

    def mha(prefix: str, width: int, heads: int, names: tuple[str, ...] = ("query", "key", "value")) -> None:
        for name in names:
            a[f"{prefix}{name}/kernel"], a[f"{prefix}{name}/bias"] = r(width, heads, width // heads), r(heads,
                                                                                                       width // heads)
        a[f"{prefix}out/kernel"], a[f"{prefix}out/bias"] = r(heads, width // heads, width), r(width)

    def mlp(prefix: str, width: int, hidden: int) -> None:
        a[f"{prefix}Dense_0/kernel"], a[f"{prefix}Dense_0/bias"] = r(width, hidden), r(hidden)
        a[f"{prefix}Dense_1/kernel"], a[f"{prefix}Dense_1/bias"] = r(hidden, width), r(width)

    def encoder(prefix: str, width: int, heads: int, hidden: int, layers: int) -> None:
        for i in range(layers):
            block = f"{prefix}encoderblock_{i}/"
            ln(block + "LayerNorm_0/", width)
            ln(block + "LayerNorm_1/", width)
            mha(block + "MultiHeadDotProductAttention_0/", width, heads)
            mlp(block + "MlpBlock_0/", width, hidden)
        ln(prefix + "encoder_norm/", width)

    img, txt = "params/img/", "params/txt/"
    a[img + "embedding/kernel"], a[img + "embedding/bias"] = r(PATCH, PATCH, 3, WIDTH), r(WIDTH)
    a[img + "pos_embedding"] = r(1, (IMAGE // PATCH) ** 2, WIDTH)
    encoder(img + "Transformer/", WIDTH, HEADS, MLP, LAYERS)
    a[img + "MAPHead_0/probe"] = r(1, 1, WIDTH)
    mha(img + "MAPHead_0/MultiHeadDotProductAttention_0/", WIDTH, HEADS)
    ln(img + "MAPHead_0/LayerNorm_0/", WIDTH)
    mlp(img + "MAPHead_0/MlpBlock_0/", WIDTH, MLP)
    a[txt + "Embed_0/embedding"], a[txt + "pos_embedding"] = r(VOCAB, TEXT_WIDTH), r(1, CONTEXT, TEXT_WIDTH)
    encoder(txt + "Encoder_0/", TEXT_WIDTH, TEXT_HEADS, TEXT_MLP, TEXT_LAYERS)
    a[txt + "head/kernel"], a[txt + "head/bias"] = r(TEXT_WIDTH, WIDTH), r(WIDTH)
    a["params/t"], a["params/b"] = np.array([np.log(10.0) + 0.3], np.float32), np.array([-10.5], np.float32)
    return stack_blocks(a) if scan else a


def stack_blocks(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``scan=True`` layout: every ``encoderblock_N/X`` stacked into ``encoderblock/X`` along a first axis."""
    blocks: dict[str, dict[int, np.ndarray]] = {}
    for key, value in arrays.items():
        if "/encoderblock_" in key:
            stack, rest = key.split("/encoderblock_", 1)
            index, name = rest.split("/", 1)
            blocks.setdefault(f"{stack}/encoderblock/{name}", {})[int(index)] = value
    stacked = {k: np.stack([v[i] for i in sorted(v)]) for k, v in blocks.items()}
    return {k: v for k, v in arrays.items() if "/encoderblock_" not in k} | stacked


def random_model(config: dict[str, Any] = SIGLIP_TINY, seed: int = 0) -> torch.nn.Module:
    """A clipforge SigLIP with every tensor perturbed (fresh biases and LayerNorms would hide a swap)."""
    torch.manual_seed(seed)
    model = clipforge.create_model(copy.deepcopy(config))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(0.05 * torch.randn_like(tensor))
    return model.eval()


def open_clip_reference(npz: Path) -> torch.nn.Module:
    """open_clip's ``CustomTextCLIP`` at the tiny shapes, with big_vision's activations, filled by open_clip's own
    big_vision reader."""
    open_clip = pytest.importorskip("open_clip")
    timm = pytest.importorskip("timm")
    from open_clip.convert import load_big_vision_weights
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    name = "vit_cftest_bigvision_siglip_32"
    if not timm.is_model(name):
        def build(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
            keep = {k: v for k, v in kwargs.items() if k in ("num_classes", "global_pool")}
            return VisionTransformer(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=LAYERS, num_heads=HEADS,
                                     mlp_ratio=MLP / WIDTH, class_token=False, act_layer="gelu_tanh", **keep)

        build.__name__ = name
        register_model(build)
    model = open_clip.CustomTextCLIP(
        embed_dim=WIDTH, init_logit_bias=-10,
        vision_cfg={"image_size": IMAGE, "timm_model_name": name, "timm_pool": "map", "timm_proj": "none"},
        text_cfg={"context_length": CONTEXT, "vocab_size": VOCAB, "width": TEXT_WIDTH, "heads": TEXT_HEADS,
                  "layers": TEXT_LAYERS, "mlp_ratio": TEXT_MLP / TEXT_WIDTH, "no_causal_mask": True,
                  "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
                  "act_kwargs": {"approximate": "tanh"}})
    load_big_vision_weights(model, str(npz))
    return model.eval()


def assert_parity(reference: torch.nn.Module, model: torch.nn.Module, size: int = IMAGE, vocab: int = VOCAB,
                  context: int = CONTEXT) -> None:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, size, size, generator=gen)
    tokens = torch.randint(0, vocab, (3, context), generator=gen)
    with torch.no_grad():
        assert (model.encode_image(images) - reference.encode_image(images)).abs().max() <= TOL
        assert (model.encode_text(tokens) - reference.encode_text(tokens)).abs().max() <= TOL
        assert torch.allclose(model.logit_scale, reference.logit_scale)
        assert torch.allclose(model.logit_bias, reference.logit_bias)


def test_export_is_read_alike_by_open_clip(tmp_path: Path) -> None:
    model = random_model()
    save_big_vision(model, tmp_path / "siglip.npz")
    written = np.load(tmp_path / "siglip.npz")
    assert written["params/t"].shape == written["params/b"].shape == (1,)  # big_vision's parameter shapes
    assert "params/img/head/kernel" not in written.files  # the MAP output is the embedding
    assert_parity(open_clip_reference(tmp_path / "siglip.npz"), model)


def test_export_image_tower_is_read_alike_by_timm(tmp_path: Path) -> None:
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    model = random_model()
    save_big_vision(model, tmp_path / "siglip.npz")
    reference = timm_vit.VisionTransformer(
        img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=LAYERS, num_heads=HEADS, mlp_ratio=MLP / WIDTH,
        class_token=False, global_pool="map", num_classes=0, act_layer="gelu_tanh").eval()
    timm_vit._load_weights(reference, str(tmp_path / "siglip.npz"), prefix="params/img/")
    images = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        assert (model.encode_image(images) - reference(images)).abs().max() <= TOL


@pytest.mark.parametrize("scan", [False, True])
def test_import_matches_open_clip(scan: bool, tmp_path: Path) -> None:
    np.savez(tmp_path / "siglip.npz", **random_siglip_arrays(scan=scan))
    assert detect_format(tmp_path / "siglip.npz") == "big_vision"
    model = load_any(tmp_path / "siglip.npz")
    c = model.config
    assert (c.family, c.embed_dim, c.act, c.norm_eps, c.scoring, c.max_logit_scale) == ("siglip", WIDTH, "gelu_tanh",
                                                                                         1e-6, "sigmoid", None)
    assert (c.vision.heads, c.vision.proj, c.text.heads, c.text.context_length) == (HEADS, False, TEXT_HEADS, CONTEXT)
    assert (c.text.causal, c.text.pool, c.tokenizer) == (False, "last", {"kind": "sentencepiece", "style": "siglip"})
    assert abs(c.init_logit_bias + 10.5) < 1e-6
    unscanned = tmp_path / "unscanned.npz"
    np.savez(unscanned, **random_siglip_arrays())  # open_clip reads blocks of either layout; give it one
    assert_parity(open_clip_reference(unscanned), model)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    arrays = random_siglip_arrays()
    np.savez(tmp_path / "a.npz", **arrays)
    config, state = load_big_vision(tmp_path / "a.npz")
    model = clipforge.create_model(config)
    model.load_state_dict(state)
    save_big_vision(model, tmp_path / "b.npz")
    written = np.load(tmp_path / "b.npz")
    assert sorted(written.files) == sorted(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)
    scanned = tmp_path / "scanned.npz"
    np.savez(scanned, **random_siglip_arrays(scan=True))
    for key, value in load_big_vision(scanned)[1].items():
        assert torch.equal(value, state[key]), key


def test_convert_writes_and_reads_big_vision(tmp_path: Path) -> None:
    model = random_model()
    save_pretrained(model, tmp_path / "model")
    written = convert(tmp_path / "model", tmp_path / "siglip.npz", to="big_vision")
    again = load_any(written)
    assert again.config.vision == model.config.vision and again.config.text == model.config.text
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_export_refuses_models_big_vision_cannot_hold(tmp_path: Path) -> None:
    for override, message in [({"act": "gelu"}, "image act='gelu', text act='gelu'"),
                              ({"text": {"act": "gelu"}}, "text act='gelu'"),
                              ({"norm_eps": 1e-5}, "norm_eps=1e-05"),
                              ({"text": {"causal": True}}, "text.causal=True"),
                              ({"vision": {"ln_pre": True}}, "ln_pre=True")]:
        config = copy.deepcopy(SIGLIP_TINY)
        for key, value in override.items():
            config[key] = config[key] | value if isinstance(value, dict) else value
        with pytest.raises(ValueError, match=message):
            save_big_vision(clipforge.create_model(config), tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(ValueError, match="only CLIPPO and SigLIP"):
        save_big_vision(clipforge.create_model("tiny-vit"), tmp_path / "x.npz")


def test_bad_files_get_clear_errors(tmp_path: Path) -> None:
    def broken(edit: Any) -> Path:
        arrays = random_siglip_arrays()
        edit(arrays)
        np.savez(tmp_path / "bad.npz", **arrays)
        return tmp_path / "bad.npz"

    with pytest.raises(BigVisionFormatError, match=r"text tower gives 40 features .* image tower 64"):
        load_big_vision(broken(lambda a: a.update({"params/txt/head/kernel": np.zeros((TEXT_WIDTH, 40), np.float32),
                                                   "params/txt/head/bias": np.zeros(40, np.float32)})))
    with pytest.raises(BigVisionFormatError, match="missing 'params/t'"):
        load_big_vision(broken(lambda a: a.pop("params/t")))
    with pytest.raises(BigVisionFormatError, match="Encoder_0/encoderblock_0/MlpBlock_0/Dense_0/kernel"):
        load_big_vision(broken(lambda a: a.pop("params/txt/Encoder_0/encoderblock_0/MlpBlock_0/Dense_0/kernel")))
    with pytest.raises(BigVisionFormatError, match="params/txt/pos_embedding has shape"):
        load_big_vision(broken(lambda a: a.update({"params/txt/pos_embedding": np.zeros((CONTEXT, 48), np.float32)})))
    scanned = random_siglip_arrays(scan=True)
    scanned["params/txt/Encoder_0/encoderblock/LayerNorm_0/scale"] = np.ones((3, TEXT_WIDTH), np.float32)
    np.savez(tmp_path / "scan.npz", **scanned)
    with pytest.raises(BigVisionFormatError, match=r"params/txt/Encoder_0/encoderblock/ disagree on their layer "
                                                   r"count \(first axes \[2, 3\]\)"):
        load_big_vision(tmp_path / "scan.npz")


def test_what_the_arrays_do_not_say() -> None:
    assert released_image_size(14, 1152, 27, 27) == 384  # So400m/14 at 384 px: 27 patches, as 378 px would have
    assert released_image_size(16, 768, 12, 16) == 256
    assert released_image_size(8, 64, 2, 4) == 32  # no preset: the grid times the patch
    assert tokenizer_for_vocab(256_000) == {"kind": "sentencepiece", "style": "gemma"}
    assert tokenizer_for_vocab(250_000) == tokenizer_for_vocab(32_000) == {"kind": "sentencepiece", "style": "siglip"}


@pytest.mark.slow
def test_released_b16_shape_export_is_read_alike_by_open_clip(tmp_path: Path) -> None:
    """SigLIP B/16 at 224 px (its preset; random weights), exported and read by open_clip's big_vision reader into
    OpenCLIP's ViT-B-16-SigLIP config with big_vision's tanh-GELU in both towers; and read back exactly."""
    open_clip = pytest.importorskip("open_clip")
    timm = pytest.importorskip("timm")
    from open_clip.convert import load_big_vision_weights
    from timm.models import register_model

    name = "vit_cftest_base_patch16_siglip_tanh_224"
    if not timm.is_model(name):
        def build(pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
            keep = {k: v for k, v in kwargs.items() if k in ("num_classes", "global_pool")}
            return timm.create_model("vit_base_patch16_siglip_224", act_layer="gelu_tanh", **keep)

        build.__name__ = name
        register_model(build)
    model = random_model(to_dict(build_config("SigLIP-B/16")))
    save_big_vision(model, tmp_path / "b16.npz")
    model_cfg = open_clip.get_model_config("ViT-B-16-SigLIP")
    model_cfg["vision_cfg"]["timm_model_name"] = name
    model_cfg["text_cfg"]["act_kwargs"] = {"approximate": "tanh"}
    reference = open_clip.CustomTextCLIP(**{k: v for k, v in model_cfg.items() if k != "custom_text"})
    load_big_vision_weights(reference, str(tmp_path / "b16.npz"))
    assert_parity(reference.eval(), model, size=224, vocab=32_000, context=64)
    config, state = load_big_vision(tmp_path / "b16.npz")
    assert config.vision == model.config.vision and config.text == model.config.text
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
