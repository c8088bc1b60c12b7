"""Model family tests: every preset builds, tiny ones train, attention and pooling are right."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import clipforge
from clipforge.config import ConfigError
from clipforge.models.layers import Attention
from clipforge.models.resnet import ModifiedResNet

REFERENCE_PARAMS = {  # OpenAI's released models, as counted by OpenCLIP
    "RN50": 102_007_137,
    "RN101": 119_688_033,
    "RN50x4": 178_300_601,
    "ViT-B/32": 151_277_313,
    "ViT-B/16": 149_620_737,
    "ViT-L/14": 427_616_513,
    "ViT-L/14@336": 427_944_193,
}
TINY = [name for name in clipforge.list_models() if "tiny" in name]
CAPTIONS = ["a red circle", "two blue squares on a striped background", "", "Ünïcödé テキスト и кириллица"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", clipforge.list_models())
def test_every_preset_builds(name: str) -> None:
    with torch.device("meta"):
        model = clipforge.create_model(name)
    if name in REFERENCE_PARAMS:
        assert n_params(model) == REFERENCE_PARAMS[name]
    if name.startswith("clippo") or name.lower().startswith("siglip"):
        expected_act = "gelu_tanh"
    elif name.startswith(("ViT-H", "ViT-g", "ViT-bigG", "tiny")) or "gelu" in name:
        expected_act = "gelu"
    else:
        expected_act = "quick_gelu"
    assert model.config.act == expected_act


def test_reference_presets_are_all_registered() -> None:
    names = set(clipforge.list_models())
    assert set(REFERENCE_PARAMS) | {"RN50x16", "RN50x64", "ViT-H/14", "ViT-g/14", "ViT-bigG/14"} <= names


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_backward_every_parameter_gets_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = clipforge.create_model(name)
    # OpenAI zero-initialises each bottleneck's last BN, which stops gradient into the residual branch at
    # step 0; open those gates so the test checks that every parameter is wired into the loss.
    for module in model.modules():
        if hasattr(module, "bn3") and hasattr(module, "downsample"):
            torch.nn.init.ones_(module.bn3.weight)
    size = model.config.vision.image_size
    images = torch.randn(4, 3, size, size)
    text = clipforge.get_text_processor(model)(CAPTIONS)  # token ids (CLIP) or rendered pixels (CLIPPO)
    out = model(images, text)
    logits = out.logit_scale * out.image_features @ out.text_features.T
    labels = torch.arange(4)
    if out.logit_bias is not None:  # SigLIP: the sigmoid loss, which the bias enters (a softmax ignores it)
        signs = 2 * torch.eye(4) - 1
        loss = -F.logsigmoid(signs * (logits + out.logit_bias)).sum() / 4
    else:
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        if pname != "text.token_embed.weight":  # rows of unused tokens get no gradient
            assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


def test_features_are_normalised_and_logit_scale_is_clamped() -> None:
    model = clipforge.create_model("tiny-vit")
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    out = model(torch.randn(2, 3, 64, 64), torch.randint(0, 49408, (2, 32)))
    assert torch.allclose(out.image_features.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out.text_features.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert math.isclose(out.logit_scale.item(), 100.0, rel_tol=1e-5)
    assert out.logit_bias is None
    assert clipforge.create_model("tiny-vit", init_logit_bias=-10.0).logit_bias.item() == -10.0


def test_text_attention_is_causal() -> None:
    torch.manual_seed(0)
    text = clipforge.create_model("tiny-vit").text.eval()
    tokens = torch.randint(1, 49000, (1, 32))
    changed = tokens.clone()
    changed[0, 20:] = torch.randint(1, 49000, (12,))
    hidden = {}
    hook = text.transformer.register_forward_hook(lambda m, i, o: hidden.setdefault(len(hidden), o))
    with torch.no_grad():
        text(tokens)
        text(changed)
    hook.remove()
    assert torch.equal(hidden[0][:, :20], hidden[1][:, :20])
    assert not torch.allclose(hidden[0][:, 20:], hidden[1][:, 20:])


def test_eot_pooling_reads_the_end_of_text_position() -> None:
    torch.manual_seed(0)
    text = clipforge.create_model("tiny-vit").text.eval()
    tokens = torch.tensor([[49406, 5, 6, 49407, 0, 0], [49406, 7, 8, 9, 10, 49407]])
    assert text.eot_positions(tokens).tolist() == [3, 5]
    custom = clipforge.create_model("tiny-vit", text={"eot_token_id": 2}).text
    assert custom.eot_positions(torch.tensor([[1, 9, 2, 0], [1, 2, 50, 0]])).tolist() == [2, 1]
    # The feature equals the final hidden state at that position, projected.
    final = {}
    text.ln_final.register_forward_hook(lambda m, i, o: final.setdefault("x", o))
    with torch.no_grad():
        feats = text(tokens)
    assert torch.allclose(feats[0], final["x"][0, 3] @ text.proj, atol=1e-6)
    assert torch.allclose(feats[1], final["x"][1, 5] @ text.proj, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_attention_equals_explicit_softmax(causal: bool) -> None:
    torch.manual_seed(0)
    attn = Attention(64, 4, causal=causal).double()
    x = torch.randn(3, 10, 64, dtype=torch.float64)
    B, T, C = x.shape
    q, k, v = attn.qkv(x).view(B, T, 3, 4, 16).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(16)
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    expected = attn.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))
    assert (attn(x) - expected).abs().max() < 1e-6


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    images, tokens = torch.randn(2, 3, 64, 64), torch.randint(0, 49408, (2, 32))

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        out = model(images, tokens)
        (out.logit_scale * out.image_features @ out.text_features.T).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.set_grad_checkpointing(True)
    for a, b in zip(plain, grads()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("pool", ["mean", "map"])
def test_other_poolings(pool: str) -> None:
    model = clipforge.create_model("tiny-vit", vision={"pool": pool})
    assert model.encode_image(torch.randn(2, 3, 64, 64)).shape == (2, 128)


def test_conv_stem_reaches_the_patch_grid_and_rejects_other_patch_sizes() -> None:
    model = clipforge.create_model("tiny-vit", vision={"stem": "conv"})  # patch 8: three stride-2 3×3 convs
    convs = [m for m in model.visual.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(3, 16, (2, 2)), (16, 32, (2, 2)),
                                                                          (32, 64, (2, 2))]
    norms = [m for m in model.visual.stem if isinstance(m, torch.nn.GroupNorm)]  # after every conv but the last
    assert [(g.num_groups, g.num_channels) for g in norms] == [(8, 16), (8, 32)]
    assert model.visual.patch_embed.kernel_size == (1, 1)
    seen = {}
    model.visual.ln_pre.register_forward_hook(lambda m, i, o: seen.__setitem__("shape", o.shape))
    features = model.encode_image(torch.randn(2, 3, 64, 64))
    features.sum().backward()
    assert seen["shape"] == (2, 1 + 64, 128) and features.shape == (2, 128)
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)
    with pytest.raises(ConfigError, match="power-of-two patch_size"):
        clipforge.create_model("tiny-vit", vision={"stem": "conv", "patch_size": 12, "image_size": 96})


def test_init_gain_scales_the_initial_weight_matrices_only() -> None:
    torch.manual_seed(0)
    plain = clipforge.create_model("tiny-vit").visual
    torch.manual_seed(0)
    gained = clipforge.create_model("tiny-vit", vision={"init_gain": 4.0}).visual
    ours = dict(gained.named_parameters())
    scaled = set()
    for name, param in plain.named_parameters():
        if name == "patch_embed.weight" or (name.startswith("transformer.") and name.endswith("weight")
                                            and param.ndim == 2):
            torch.testing.assert_close(ours[name], 4.0 * param)
            scaled.add(name)
        else:
            assert torch.equal(ours[name], param), name
    assert len(scaled) == 1 + 4 * 4  # patch embedding; qkv, out_proj, fc and proj of each of 4 blocks
    with pytest.raises(ConfigError, match="vision.init_gain: must be positive"):
        clipforge.create_model("tiny-vit", vision={"init_gain": 0.0})


def test_patch_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", vision={"patch_dropout": 0.5})
    seen = {}
    model.visual.ln_pre.register_forward_hook(lambda m, i, o: seen.__setitem__(m.training, o.shape))
    images = torch.randn(2, 3, 64, 64)
    model.train()(images, None)
    model.eval()(images, None)
    assert seen[True] == (2, 1 + 32, 128) and seen[False] == (2, 1 + 64, 128)


def test_unknown_or_misspelled_field_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="unknown field 'widht'.*did you mean 'width'"):
        clipforge.create_model("tiny-vit", vision={"widht": 64})
    with pytest.raises(ConfigError, match="unknown field 'embeddim'"):
        clipforge.create_model("tiny-vit", embeddim=64)
    with pytest.raises(ConfigError, match=r"text.layers: expected an integer, got str"):
        clipforge.create_model("tiny-vit", **{"text.layers": "four"})
    with pytest.raises(ConfigError, match="act: expected one of"):
        clipforge.create_model("tiny-vit", act="relu")
    with pytest.raises(ConfigError, match="not divisible by heads"):
        clipforge.create_model("tiny-vit", vision={"heads": 5})
    with pytest.raises(ConfigError, match="unknown model 'ViT-B-33'.*ViT-B-32"):
        clipforge.create_model("ViT-B-33")


def test_overrides_and_config_round_trip() -> None:
    from clipforge.config import from_dict, to_dict
    from clipforge.models.config import CLIPConfig

    model = clipforge.create_model("tiny-rn", **{"vision.width": 32, "embed_dim": 64})
    assert model.config.vision.width == 32 and model.config.embed_dim == 64
    assert from_dict(CLIPConfig, to_dict(model.config)) == model.config
    with torch.device("meta"):
        rn50 = clipforge.create_model("RN50")
    assert from_dict(CLIPConfig, to_dict(rn50.config)) == rn50.config


def test_openai_resnet_initialisation() -> None:
    model = clipforge.create_model("tiny-rn")
    for stage in (model.visual.layer1, model.visual.layer4):
        assert all((block.bn3.weight == 0).all() for block in stage)
    std = model.visual.attn_pool.q_proj.weight.std().item()
    assert abs(std - (16 * 32) ** -0.5) / (16 * 32) ** -0.5 < 0.1


def test_clippo_resnet_tower_uses_no_batch_statistics() -> None:
    """A CLIPPO ResNet (``norm: group``) embeds each input on its own in training mode too: the image and the
    text pass share the tower, and batch statistics (BatchNorm) would depend on which pass a sample rides in."""
    torch.manual_seed(0)
    model = clipforge.create_model("clippo-tiny-rn").train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    render = clipforge.get_text_processor(model)
    pixels = render(["a red circle", "два синих квадрата", "赤い円"])
    images = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        alone = model.encode_text(pixels[:1])
        for batch in (pixels, torch.cat([pixels[:1], pixels[:1]])):
            assert torch.allclose(model.encode_text(batch)[:1], alone, atol=1e-5)
        assert torch.allclose(model.encode_image(images)[:1], model.encode_image(images[:1]), atol=1e-5)
    bn = ModifiedResNet(dataclasses.replace(model.config.vision, norm="batch"), 128).train()  # what it avoids
    with torch.no_grad():
        assert not torch.allclose(bn(images)[:1], bn(images[:2])[:1], atol=1e-3)
    with pytest.raises(clipforge.ConfigError, match="a CLIPPO ResNet needs 'group'"):
        clipforge.create_model("clippo-tiny-rn", vision={"norm": "batch"})
