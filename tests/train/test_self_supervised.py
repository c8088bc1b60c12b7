"""SLIP and DeCLIP: the SimCLR loss against a direct computation, the text queue, one step's loss against its
terms computed by hand, training runs that resume exactly and export the plain model, and the refused combinations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import clipforge
from clipforge.config import ConfigError
from clipforge.models.factory import build_config, build_model
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.checkpoint import load_checkpoint
from clipforge.train.loss import clip_loss, simclr_loss
from clipforge.train.self_supervised import (
    HEADS,
    DeclipConfig,
    RecipeHeads,
    SlipConfig,
    attach_recipe_heads,
    recipe_forward_backward,
)
from helpers.tiny import tiny_vit_overrides

RUN = [*tiny_vit_overrides(), "data.train_size=200", "data.num_workers=0", "eval.size=8", "eval.retrieval_size=4",
       "schedule.warmup_steps=1", "log_every=1", "steps=4", "batch_size=8", "plots=false", "checkpoint_every=1",
       "keep_checkpoints=10", "data.augment=true", "augment.rotation=10", "augment.scale=[0.6,1.0]",
       "slip.mlp_dim=32", "slip.out_dim=16", "declip.nn_weight=0.5", "declip.queue_size=12"]


def _train(out: Path, *extra: str, resume: str | None = None):
    return train(load_config(None, parse_overrides([*RUN, *extra, f"output_dir={out}"])), Runtime(), resume=resume)


def test_simclr_loss_equals_its_definition():
    torch.manual_seed(0)
    first, second = torch.randn(5, 7), torch.randn(5, 7)
    z = F.normalize(torch.cat([first, second]), dim=-1)
    total = 0.0
    for i in range(10):  # row i's positive is its other view; every other row is a negative
        positive = (i + 5) % 10
        others = [j for j in range(10) if j != i]
        logits = torch.stack([z[i] @ z[j] / 0.2 for j in others])
        total += -(z[i] @ z[positive] / 0.2 - torch.logsumexp(logits, 0))
    assert torch.allclose(simclr_loss(first, second, 0.2), total / 10, atol=1e-5)
    same = torch.eye(4) * 10  # two identical, orthogonal views: each row finds its pair at once
    assert simclr_loss(same, same, 0.05) < 1e-6


def test_the_queue_is_fifo_and_finds_nearest_neighbours():
    heads = RecipeHeads(3, None, DeclipConfig(nn_weight=1.0, queue_size=4))
    assert heads.nearest(torch.eye(3)) is None
    basis = torch.eye(3)
    heads.push(basis)
    assert torch.equal(heads.nearest(torch.tensor([[0.1, 0.9, 0.0]])), basis[1:2])
    heads.push(-basis)  # 6 pushed into 4 slots: the two oldest (e0, e1) are overwritten
    assert int(heads.queue_count) == 6
    assert torch.equal(heads.queue, torch.stack([-basis[1], -basis[2], basis[2], -basis[0]]))


def _model_with_heads(slip, declip):
    torch.manual_seed(0)
    model = build_model(build_config("tiny-vit", embed_dim=32, vision={"layers": 1, "width": 32, "heads": 2,
                                                                       "image_size": 32, "patch_size": 8},
                                     text={"layers": 1, "width": 32, "heads": 2, "context_length": 16}))
    attach_recipe_heads(model, slip, declip)
    return model


def test_one_step_is_the_sum_of_its_terms():
    slip, declip = SlipConfig(weight=0.7, temperature=0.2, mlp_dim=16, out_dim=8), DeclipConfig(nn_weight=0.5,
                                                                                                queue_size=64,
                                                                                                text_weight=0.3)
    model = _model_with_heads(slip, declip)
    getattr(model, HEADS).push(F.normalize(torch.randn(20, model.config.embed_dim), dim=-1))
    images, views = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 3, 32, 32)
    texts, texts2 = torch.randint(1, 400, (6, 16)), torch.randint(1, 400, (6, 16))
    queue_before = getattr(model, HEADS).queue.clone()
    terms: dict = {}
    loss = recipe_forward_backward(model, images, texts, {"views": views, "texts2": texts2}, clip_loss, Runtime(),
                                   slip, declip, terms=terms)
    assert all(p.grad is not None for p in model.towers()["image"].parameters())
    assert all(p.grad is not None for p in getattr(model, HEADS).projector.parameters())

    with torch.no_grad():  # the same terms by hand
        scale = model.scale()
        i1, i2 = model.encode_image(images, normalize=True), model.encode_image(views[:, 0], normalize=True)
        t1, t2 = model.encode_text(texts, normalize=True), model.encode_text(texts2, normalize=True)
        multi = sum(clip_loss(i, t, scale) for i in (i1, i2) for t in (t1, t2)) / 4
        nearest = queue_before[(t1 @ queue_before.T).argmax(1)]
        nn_term = clip_loss(i1, nearest, scale)
        z = getattr(model, HEADS).projector(model.encode_image(torch.cat([views[:, 1], views[:, 2]])))
        slip_term = simclr_loss(*z.chunk(2), 0.2)
        text_term = clip_loss(t1, t2, scale)  # the two caption draws of each pair
    assert torch.allclose(terms["contrastive"][0], multi, atol=1e-5)
    assert torch.allclose(terms["declip_nn"][0], nn_term, atol=1e-5)
    assert torch.allclose(terms["slip"][0], slip_term, atol=1e-5)
    assert torch.allclose(terms["declip_text"][0], text_term, atol=1e-5)
    assert torch.allclose(loss, multi + 0.5 * nn_term + 0.7 * slip_term + 0.3 * text_term, atol=1e-5)
    assert int(getattr(model, HEADS).queue_count) == 26  # this batch's texts joined the queue after the term


def test_a_run_resumes_exactly_and_exports_the_plain_model(tmp_path: Path):
    result = _train(tmp_path / "whole")
    assert math.isfinite(result.losses[-1][1])
    logged = [line for line in (tmp_path / "whole/metrics.jsonl").read_text().splitlines() if '"slip"' in line]
    assert len(logged) == 4 and '"declip_nn"' in logged[-1] and '"contrastive"' in logged[-1]
    state = load_checkpoint(tmp_path / "whole/checkpoints/step_00000002.pt")
    assert int(state["model"][f"{HEADS}.queue_count"]) == 16  # the queue is in the checkpoint
    _train(tmp_path / "resumed", resume=str(tmp_path / "whole/checkpoints/step_00000002.pt"))
    a = clipforge.load(str(tmp_path / "whole/final"))[0].state_dict()
    b = clipforge.load(str(tmp_path / "resumed/final"))[0].state_dict()
    assert not any(k.startswith(HEADS) for k in a)  # the projector and queue are training-only
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_recipe_trains_alone(tmp_path: Path):
    base = [o for o in RUN if not o.startswith(("slip.", "declip.", "augment."))]
    for i, extra in enumerate((["slip.mlp_dim=16"], ["declip.multi_view=true", "declip.text_weight=0.5"],
                               ["augment.flip=0.5"],
                               ["slip.mlp_dim=16", "declip.nn_weight=0.1", "data.augment=false"],
                               ["text_augment.tag_dropout=0.5", "loss=siglip", "model_overrides.init_logit_bias=-10"])):
        config = load_config(None, parse_overrides([*base, *extra, "checkpoint_every=0", "steps=2",
                                                    f"output_dir={tmp_path / str(i)}"]))
        assert math.isfinite(train(config, Runtime()).losses[-1][1])


@pytest.mark.parametrize("extra, message", [
    (["slip.mlp_dim=8", "accum_steps=2"], "accum_steps > 1"),
    (["declip.nn_weight=0.5", "lock=image"], "lock: image"),
    (["slip.mlp_dim=8", "parallel=fsdp"], "parallel: fsdp"),
    (["augment.flip=0.5", "data.augment=false"], "data.augment: true"),
    (["declip.multi_view=false"], "nothing to add"),
    (["declip.multi_view=false", "declip.nn_weight=0.5", "declip.text_weight=0.5"], "set declip.multi_view: true"),
    (["declip.text_weight=0.5", "lock=text"], "lock: text"),
    (["declip.text_weight=-1"], "declip.text_weight must be >= 0"),
    (["slip.temperature=0"], "slip.temperature"),
])
def test_refused_combinations_are_named(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, parse_overrides([*tiny_vit_overrides(), "batch_size=8", *extra]))


def test_without_data_augment_the_main_view_is_fixed_and_the_extra_views_are_drawn():
    import random

    from PIL import Image

    from clipforge.train.loop import sample_recipe
    from clipforge.transforms import model_transforms

    config = load_config(None, parse_overrides([*tiny_vit_overrides(), "batch_size=8", "data.augment=false",
                                                "slip.mlp_dim=8", "declip.multi_view=true"]))
    recipe = sample_recipe(config, *model_transforms(config.model_config()))
    image = Image.fromarray(torch.randint(0, 255, (48, 40, 3), dtype=torch.uint8).numpy())
    first, _, a = recipe(image, ["a scene"], random.Random(0))
    second, _, b = recipe(image, ["a scene"], random.Random(1))
    assert torch.equal(first, second) and a["views"].shape[0] == 3  # DeCLIP's view, then SLIP's two
    assert not torch.equal(a["views"], b["views"])


def test_the_reading_view_moves_and_scales_the_ink_and_keeps_it_whole():
    from clipforge.data.augment import reading_view
    from clipforge.text.render import RenderConfig, UnifontRenderer

    renderer = UnifontRenderer(RenderConfig(image_size=64, mode="improved", monospace=True))
    pixels = renderer(["a red cart"])[0]

    def box(p):
        ink = (p != 127).any(0)
        rows, cols = ink.any(1).nonzero().flatten(), ink.any(0).nonzero().flatten()
        return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1

    top, bottom, left, right = box(pixels)
    moved = reading_view(pixels, 127, 1.0, 1.0, 1.0)  # full size, to the bottom-right corner
    t, b, x0, x1 = box(moved)
    assert (b, x1) == (64, 64) and (b - t, x1 - x0) == (bottom - top, right - left)
    assert torch.equal(moved[:, t:b, x0:x1], pixels[:, top:bottom, left:right])  # the same glyphs, moved
    small = reading_view(pixels, 127, 0.5, 0.0, 0.0)
    t, b, x0, x1 = box(small)
    assert (t, x0) == (0, 0) and abs((b - t) - (bottom - top) / 2) <= 1 and abs((x1 - x0) - (right - left) / 2) <= 1
    blank = torch.full((3, 16, 16), 127, dtype=torch.uint8)
    assert torch.equal(reading_view(blank, 127, 0.7, 0.3, 0.3), blank)


def test_the_batch_moves_its_own_renderings_for_the_reading_term():
    import random

    from PIL import Image

    from clipforge.data.augment import SampleRecipe, batch_extras, reading_view
    from clipforge.text.render import RenderConfig, UnifontRenderer

    renderer = UnifontRenderer(RenderConfig(image_size=64, mode="improved", monospace=True))
    recipe = SampleRecipe(lambda image, rng: torch.zeros(3, 8, 8), reading_scale=(0.5, 0.9))
    image, samples = Image.new("RGB", (8, 8)), []
    for i, caption in enumerate(["a red cart", "two cats"]):
        samples.append(recipe(image, [caption], random.Random(i)))
    texts = renderer([caption for _, caption, _ in samples])
    read = batch_extras([extra for _, _, extra in samples], renderer, texts)["texts_read"]
    for row, (_, _, extra) in enumerate(samples):
        assert 0.5 <= extra["reading"][0] <= 0.9
        assert torch.equal(read[row], reading_view(texts[row], 127, *extra["reading"]))
    assert not torch.equal(read[0], texts[0])


def test_the_reading_term_is_the_contrastive_loss_of_the_two_renderings():
    from clipforge.train.self_supervised import ReadingConfig

    torch.manual_seed(0)
    model = clipforge.create_model("clippo-tiny", vision={"layers": 1, "width": 32, "heads": 2}, embed_dim=16)
    render = clipforge.get_text_processor(model)
    images = torch.randn(4, 3, *(model.config.vision.image_size,) * 2)
    texts = render(["one", "two cats", "a red cart", "three"])
    read = torch.stack([t.roll(5, dims=2) for t in texts])  # any second rendering
    terms: dict = {}
    loss = recipe_forward_backward(model, images, texts, {"texts_read": read}, clip_loss, Runtime(), None, None,
                                   reading=ReadingConfig(weight=0.3), terms=terms)
    with torch.no_grad():
        scale = model.scale()
        t1, t2 = model.encode_text(texts, normalize=True), model.encode_text(read, normalize=True)
        plain = clip_loss(model.encode_image(images, normalize=True), t1, scale)
        term = clip_loss(t1, t2, scale)
    assert torch.allclose(terms["reading"][0], term, atol=1e-5) and term > 0.1
    assert torch.allclose(loss, plain + 0.3 * term, atol=1e-5)


def test_a_clippo_run_with_the_reading_term_logs_it_and_resumes_exactly(tmp_path: Path):
    run = ["model=clippo-tiny", "model_overrides.vision.layers=1", "model_overrides.vision.width=32",
           "model_overrides.vision.heads=2", "model_overrides.embed_dim=16", "data.train_size=100",
           "data.num_workers=0", "eval.size=8", "eval.retrieval_size=4", "schedule.warmup_steps=1", "log_every=1",
           "steps=3", "batch_size=8", "plots=false", "checkpoint_every=1", "keep_checkpoints=10",
           "reading.scale=[0.5,0.9]"]
    whole = train(load_config(None, parse_overrides([*run, f"output_dir={tmp_path / 'whole'}"])), Runtime())
    assert math.isfinite(whole.losses[-1][1])
    logged = (tmp_path / "whole/metrics.jsonl").read_text().splitlines()
    assert sum('"reading"' in line for line in logged) == 3
    train(load_config(None, parse_overrides([*run, f"output_dir={tmp_path / 'resumed'}"])), Runtime(),
          resume=str(tmp_path / "whole/checkpoints/step_00000001.pt"))
    a = clipforge.load(str(tmp_path / "whole/final"))[0].state_dict()
    b = clipforge.load(str(tmp_path / "resumed/final"))[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra, message", [
    (["reading.weight=0.5"], "needs a CLIPPO model"),
    (["model=clippo-tiny", "reading.weight=0.5", "lock=text"], "lock: text"),
    (["model=clippo-tiny", "reading.scale=[0.5,1.5]"], "reading.scale"),
])
def test_the_reading_term_refuses_what_it_cannot_do(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, parse_overrides([*tiny_vit_overrides(), "batch_size=8", *extra]))
