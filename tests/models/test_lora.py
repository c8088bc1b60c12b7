"""LoRA adapters (clipforge.models.lora): exact at initialisation, only adapters train, exact merge, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clipforge.config import ConfigError
from clipforge.models.factory import build_config, build_model
from clipforge.models.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    count_parameters,
    lora_config,
    lora_layers,
    lora_removed,
    lora_state_dict,
    merge_lora,
)

# Two blocks per tower, width 32 (heads 2), MLP ratio 4: the counts below follow from these shapes.
TINY = {"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2},
        "text": {"width": 32, "heads": 2, "layers": 2, "context_length": 16}}
SIGLIP = {"embed_dim": 32, "vision": {"image_size": 32, "width": 32, "layers": 1, "heads": 2},
          "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}
CLIPPO = {"embed_dim": 32, "vision": {"image_size": 32, "width": 32, "layers": 1, "heads": 2},
          "render": {"image_size": 32}}
RESNET = {"embed_dim": 32, "vision": {"image_size": 32}, "text": {"width": 32, "heads": 2, "layers": 1,
                                                               "context_length": 16}}


def tiny(preset: str = "tiny-vit", overrides: dict | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(build_config(preset, **(overrides or TINY))).eval()


def inputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    size = model.config.vision.image_size
    images = torch.randn(3, 3, size, size, generator=g)
    if model.config.family == "clippo":
        return images, torch.randint(0, 256, (3, 3, size, size), generator=g, dtype=torch.uint8)
    return images, torch.randint(1, 100, (3, model.config.text.context_length), generator=g)


def features(model: nn.Module, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(images, text)
    return out.image_features, out.text_features


def train_adapters(model: nn.Module, steps: int = 3) -> None:
    """A few AdamW steps on the contrastive loss of a fixed batch, in train mode (BatchNorm too), then eval mode."""
    from clipforge.train.loss import clip_loss

    images, text = inputs(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(steps):
        out = model(images, text)
        clip_loss(out.image_features, out.text_features, out.logit_scale).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


CASES = [("tiny-vit", TINY, ("attn", "mlp")), ("siglip-tiny", SIGLIP, ("attn", "mlp", "pool")),
         ("clippo-tiny", CLIPPO, ("attn", "mlp", "pool")), ("tiny-rn", RESNET, ("attn", "mlp", "pool"))]


@pytest.mark.parametrize(("preset", "overrides", "targets"), CASES, ids=[c[0] for c in CASES])
def test_at_initialisation_the_adapted_model_computes_exactly_the_base(preset, overrides, targets) -> None:
    base = tiny(preset, overrides)
    model = apply_lora(copy.deepcopy(base), LoRAConfig(rank=4, targets=targets))
    assert lora_layers(model)
    x = inputs(base)
    for a, b in zip(features(base, *x), features(model, *x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("preset", "overrides", "targets"), CASES, ids=[c[0] for c in CASES])
def test_training_changes_only_the_adapters_and_merging_gives_the_same_model(preset, overrides, targets) -> None:
    base = tiny(preset, overrides)
    model = apply_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=8, targets=targets))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_adapters(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Base weights (logit scale too) and buffers (a ResNet's BatchNorm statistics) bit-identical.
    assert changed and changed <= set(lora_state_dict(model))
    assert any(k.endswith("lora_B") for k in changed)  # B moved off zero: the update is no longer nothing
    x = inputs(base)
    adapted = features(model, *x)
    assert not torch.allclose(adapted[0], features(base, *x)[0])
    merged = merge_lora(copy.deepcopy(model))
    assert lora_config(merged) is None and not lora_layers(merged)
    assert set(merged.state_dict()) == set(base.state_dict())  # an ordinary model: save_pretrained writes it as is
    assert all(p.requires_grad for p in merged.parameters())
    assert not any(m._forward_pre_hooks for m in merged.modules())  # BatchNorm trains normally again
    for a, b in zip(adapted, features(merged, *x)):
        assert (a - b).abs().max().item() < 1e-5


def test_merged_weights_are_base_plus_scaled_low_rank_product() -> None:
    model = apply_lora(tiny(), LoRAConfig(rank=2, alpha=6, targets=("attn",), towers=("text",)))
    layer = model.text.transformer.blocks[0].attn.qkv
    assert isinstance(layer, LoRALinear) and layer.scale == 3.0
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = layer.weight + 3.0 * layer.lora_B @ layer.lora_A
    merged = merge_lora(model).text.transformer.blocks[0].attn.qkv
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged.weight, expected, rtol=0, atol=1e-6)


def test_trainable_parameters_are_the_adapters_of_a_known_config() -> None:
    model = tiny()
    _, total = count_parameters(model)
    apply_lora(model, LoRAConfig(rank=4))
    # Per block (width 32, MLP 128): qkv 4·32 + 96·4, out_proj 4·32 + 32·4, fc 4·32 + 128·4, proj 4·128 + 32·4.
    per_block = (128 + 384) + (128 + 128) + (128 + 512) + (512 + 128)
    trainable, total_with = count_parameters(model)
    assert trainable == 4 * per_block == 8192  # 2 blocks × 2 towers
    assert total_with == total + trainable
    assert not model.logit_scale.requires_grad  # frozen, as peft does: the adapters alone fit the base
    image_only = apply_lora(tiny(), LoRAConfig(rank=1, towers=("image",), targets=("attn",)))
    assert count_parameters(image_only)[0] == 2 * ((32 + 96) + (32 + 32))


def test_patterns_choose_layers_by_name() -> None:
    model = apply_lora(tiny(), LoRAConfig(targets=("visual.transformer.blocks.1.*",), towers=("image",)))
    assert sorted(lora_layers(model)) == [f"visual.transformer.blocks.1.{n}" for n in
                                          ("attn.out_proj", "attn.qkv", "mlp.fc", "mlp.proj")]


def test_a_target_that_names_no_layer_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"'pool' matches no linear layer.*groups there: \['attn', 'mlp'\].*"
                                          r"visual\.transformer\.blocks\.\*\.attn\.qkv"):
        apply_lora(tiny(), LoRAConfig(targets=("pool",)))
    with pytest.raises(ConfigError, match="'visual.blocks.*' matches no linear layer"):
        apply_lora(tiny(), LoRAConfig(targets=("visual.blocks.*",)))
    with pytest.raises(ConfigError, match="no target .* matches a layer of the text tower"):
        apply_lora(tiny(), LoRAConfig(targets=("visual.*",)))


@pytest.mark.parametrize("fields", [{"rank": 0}, {"alpha": 0.0}, {"dropout": 1.0}, {"dropout": -0.1},
                                    {"towers": ()}, {"towers": ("vision",)}, {"targets": ()}])
def test_config_values_are_checked(fields: dict) -> None:
    with pytest.raises(ConfigError, match="lora"):
        LoRAConfig(**fields)


def test_adapters_apply_once_and_the_base_view_is_the_base() -> None:
    base = tiny()
    model = apply_lora(copy.deepcopy(base), LoRAConfig(rank=2, dropout=0.1))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, LoRAConfig())
    with lora_removed(model):
        assert list(model.state_dict()) == list(base.state_dict())  # the same keys in the same order
        assert all(torch.equal(v, base.state_dict()[k]) for k, v in model.state_dict().items())
    assert lora_layers(model)  # restored
