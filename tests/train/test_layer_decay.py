"""Layer-wise learning-rate decay: each parameter's layer, the documented rates, and decay 1 changing nothing."""

from __future__ import annotations

import pytest
import torch

from clipforge.config import ConfigError
from clipforge.models.factory import build_model
from clipforge.train import load_config, parse_overrides
from clipforge.train.layer_groups import describe_groups, layer_map
from clipforge.train.optim import build_optimizer, param_groups, set_lr

# Image tower: 2 blocks (layers 0..3); text tower: 3 blocks (layers 0..4).
ARCH = ["model_overrides.embed_dim=16", "model_overrides.vision.image_size=16", "model_overrides.vision.patch_size=8",
        "model_overrides.vision.width=16", "model_overrides.vision.layers=2", "model_overrides.vision.heads=2",
        "model_overrides.text.width=16", "model_overrides.text.heads=2", "model_overrides.text.layers=3",
        "model_overrides.text.context_length=8", "model_overrides.text.vocab_size=64"]


def tiny(*extra: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config(None, parse_overrides([*ARCH, *extra])).model_config())


def lr_of(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, float]:
    """Each named parameter's learning rate in ``optimizer``."""
    by_id = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


def test_layers_are_embeddings_blocks_and_head() -> None:
    layers = layer_map(tiny())
    expect = {"visual.patch_embed.weight": ("image", 0), "visual.class_token": ("image", 0),
              "visual.pos_embed": ("image", 0), "visual.transformer.blocks.0.attn.qkv.weight": ("image", 1),
              "visual.transformer.blocks.1.mlp.fc.bias": ("image", 2), "visual.ln_post.weight": ("image", 3),
              "visual.proj": ("image", 3), "text.token_embed.weight": ("text", 0), "text.pos_embed": ("text", 0),
              "text.transformer.blocks.2.ln_1.weight": ("text", 3), "text.ln_final.bias": ("text", 4),
              "text.proj": ("text", 4), "logit_scale": (None, 0)}
    assert {k: (layers[k].tower, layers[k].index) for k in expect} == expect
    assert {layers[k].blocks for k in layers if layers[k].tower == "image"} == {2}


def test_layer_decay_assigns_the_documented_rates() -> None:
    model = tiny()
    lr, d_img, d_txt = 1e-3, 0.5, 0.8
    optimizer = build_optimizer(model, lr, 0.1, (0.9, 0.98), 1e-6, torch.device("cpu"), logit_scale_lr_mult=10.0,
                                layer_decay={"image": d_img, "text": d_txt})
    # image: layer 0 (patch_embed.weight | class token, positions, ln_pre), 2 blocks × (matrices | rest), head
    # (proj | ln_post) = 8; text: layer 0 (embeddings, none decayed) 1, 3 blocks × 2, head 2 = 9; logit scale 1.
    assert len(optimizer.param_groups) == 18
    set_lr(optimizer, lr)
    lrs = lr_of(optimizer, model)
    expect = {"visual.patch_embed.weight": d_img**3, "visual.pos_embed": d_img**3, "visual.class_token": d_img**3,
              "visual.transformer.blocks.0.attn.qkv.weight": d_img**2, "visual.transformer.blocks.1.mlp.proj.weight":
              d_img, "visual.ln_post.weight": 1.0, "visual.proj": 1.0,
              "text.token_embed.weight": d_txt**4, "text.pos_embed": d_txt**4,
              "text.transformer.blocks.0.attn.out_proj.bias": d_txt**3,
              "text.transformer.blocks.2.mlp.fc.weight": d_txt,
              "text.ln_final.weight": 1.0, "text.proj": 1.0, "logit_scale": 10.0}
    assert {k: lrs[k] for k in expect} == pytest.approx({k: lr * m for k, m in expect.items()}, rel=1e-12)
    assert len(lrs) == len(list(model.parameters()))  # every parameter in exactly one group
    wd = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    for name, decayed in [("visual.patch_embed.weight", True), ("visual.pos_embed", False), ("text.proj", True),
                          ("text.token_embed.weight", False), ("visual.transformer.blocks.0.ln_1.weight", False),
                          ("logit_scale", False)]:
        assert wd[id(params[name])] == (0.1 if decayed else 0.0), name  # the weight-decay rules are unchanged


def test_decay_one_gives_the_groups_of_before() -> None:
    model = tiny()
    before = param_groups(model, 0.2, logit_scale_lr_mult=5.0)
    after = param_groups(model, 0.2, logit_scale_lr_mult=5.0, layer_decay={"image": 1.0, "text": 1.0})
    assert len(after) == 3
    assert [[id(p) for p in g["params"]] for g in after] == [[id(p) for p in g["params"]] for g in before]
    assert [{k: v for k, v in g.items() if k != "params"} for g in after] == \
        [{k: v for k, v in g.items() if k != "params"} for g in before]
    # One tower decayed: the other keeps the schedule's rate everywhere.
    optimizer = build_optimizer(model, 1e-3, 0.2, (0.9, 0.98), 1e-6, torch.device("cpu"),
                                layer_decay={"image": 0.5, "text": 1.0})
    set_lr(optimizer, 1e-3)
    lrs = lr_of(optimizer, model)
    assert all(v == 1e-3 for k, v in lrs.items() if k.startswith("text.") or k == "logit_scale")
    assert lrs["visual.pos_embed"] == pytest.approx(1e-3 * 0.5**3)


def test_resnet_stages_are_its_layers() -> None:
    model = build_model(load_config(None, parse_overrides(["model=tiny-rn"])).model_config())
    layers = layer_map(model)
    assert (layers["visual.conv1.weight"].index, layers["visual.bn3.bias"].index) == (0, 0)
    assert layers["visual.layer1.0.conv1.weight"].index == 1
    assert layers["visual.layer4.0.conv1.weight"].index == 4
    assert layers["visual.attn_pool.q_proj.weight"].index == 5
    optimizer = build_optimizer(model, 1.0, 0.0, (0.9, 0.98), 1e-6, torch.device("cpu"), layer_decay={"image": 0.5})
    set_lr(optimizer, 1.0)
    lrs = lr_of(optimizer, model)
    assert lrs["visual.conv1.weight"] == 0.5**5 and lrs["visual.layer3.0.conv2.weight"] == 0.5**2
    assert lrs["visual.attn_pool.out_proj.weight"] == 1.0 and lrs["visual.attn_pool.pos_embed"] == 1.0  # pooling head


def test_clippo_one_tower_follows_the_image_decay() -> None:
    model = build_model(load_config(None, parse_overrides(["model=clippo-tiny"])).model_config())
    optimizer = build_optimizer(model, 1.0, 0.0, (0.9, 0.98), 1e-6, torch.device("cpu"),
                                layer_decay={"image": 0.5, "text": 0.9})
    set_lr(optimizer, 1.0)
    lrs = lr_of(optimizer, model)
    blocks = len(model.visual.transformer.blocks)
    assert lrs["visual.pos_embed"] == pytest.approx(0.5 ** (blocks + 1))
    assert {layer.tower for layer in layer_map(model).values()} == {"image", None}


def test_describe_groups_names_tower_layers_mult_and_count() -> None:
    model = tiny()
    groups = param_groups(model, 0.1, layer_decay={"image": 0.5, "text": 0.8})
    lines = describe_groups(model, groups).splitlines()
    assert len(lines) == 1 + len(groups)
    assert lines[1].split()[:5] == ["0", "image", "0", "0.125", "0.1"]  # patch_embed.weight: 16·3·8·8 parameters
    assert lines[1].split()[5] == f"{16 * 3 * 8 * 8:,}"
    assert lines[-1].split()[1:3] == ["model", "-"]  # the logit scale


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_decay_outside_zero_one_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="optim.image_layer_decay"):
        load_config(None, parse_overrides([f"optim.image_layer_decay={value}"]))
