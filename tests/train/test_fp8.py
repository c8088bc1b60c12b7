"""``precision: fp8``: which layers become torchao's Float8Linear, float8's numerics (emulated on the CPU) against
the plain layer, refusals where float8 cannot run, and a run that trains, resumes exactly and exports a plain
model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import clipforge
from clipforge.config import ConfigError
from clipforge.models.factory import build_config, build_model
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.fp8 import Fp8Config, convert_to_fp8, fp8_unavailable
from helpers.tiny import tiny_vit_overrides

Float8Linear = pytest.importorskip("torchao.float8.float8_linear", reason="the fp8 extra (torchao)").Float8Linear
CPU = torch.device("cpu")
RUN = [*tiny_vit_overrides(), "data.train_size=200", "data.num_workers=0", "eval.size=8", "eval.retrieval_size=4",
       "schedule.warmup_steps=1", "log_every=1", "steps=4", "batch_size=8", "plots=false", "checkpoint_every=2",
       "keep_checkpoints=10", "precision=fp8", "fp8.emulate=true"]


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return build_model(build_config("tiny-vit", embed_dim=32, vision={"layers": 1, "width": 32, "heads": 2,
                                                                       "image_size": 32, "patch_size": 8},
                                    text={"layers": 1, "width": 32, "heads": 2, "context_length": 16}))


def test_the_towers_linear_layers_become_float8_and_keep_their_parameters():
    model = _tiny_vit()
    linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
    weights = {name: m.weight for name, m in linears.items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_to_fp8(model, Fp8Config(emulate=True), CPU)
    swapped = {name for name, m in model.named_modules() if isinstance(m, Float8Linear)}
    assert converted == len(swapped) == len(linears) > 0  # every dimension of this model is a multiple of 16
    modules = dict(model.named_modules())
    assert all(modules[name].weight is weights[name] for name in swapped)  # the optimiser's tensors, unchanged
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def test_layers_float8_cannot_take_stay_plain():
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 10), nn.Linear(10, 16))
    assert convert_to_fp8(model, Fp8Config(emulate=True), CPU) == 1  # 10 is no multiple of 16
    assert isinstance(model[0], Float8Linear) and type(model[2]) is nn.Linear and type(model[3]) is nn.Linear
    with pytest.raises(ConfigError, match="no linear layer whose dimensions are multiples of 16"):
        convert_to_fp8(nn.Sequential(nn.Linear(10, 3)), Fp8Config(emulate=True), CPU)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "rowwise_with_gw_hp"])
def test_a_float8_layer_is_within_float8s_rounding_of_the_plain_one(recipe: str):
    torch.manual_seed(0)
    plain = nn.Linear(64, 128)
    fp8 = nn.Sequential(nn.Linear(64, 128))
    fp8[0].load_state_dict(plain.state_dict())
    convert_to_fp8(fp8, Fp8Config(recipe=recipe, emulate=True), CPU)
    x = torch.randn(32, 64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = plain(x1), fp8(x2)
    grad = torch.randn_like(y1)
    y1.backward(grad)
    y2.backward(grad)
    relative = lambda a, b: float((a - b).detach().norm() / b.detach().norm())
    # e4m3 keeps 3 mantissa bits (a relative step of 1/16) for inputs and weights, e5m2 2 bits for the gradient
    assert 1e-4 < relative(y2, y1) < 0.06  # rounded (not the plain matmul), but only by float8's rounding
    assert relative(x2.grad, x1.grad) < 0.15 and relative(fp8[0].weight.grad, plain.weight.grad) < 0.15


def test_float8_is_refused_where_it_cannot_run():
    assert "compute capability 8.9" in (fp8_unavailable(CPU, Fp8Config()) or "")
    assert fp8_unavailable(CPU, Fp8Config(emulate=True)) is None
    with pytest.raises(ConfigError, match="fp8.emulate: true"):
        convert_to_fp8(_tiny_vit(), Fp8Config(), CPU)
    with pytest.raises(ConfigError, match="not with lora"):
        load_config(None, parse_overrides([*tiny_vit_overrides(), "precision=fp8", "lora.rank=4"]))
    with pytest.raises(ConfigError, match="parallel: fsdp"):
        load_config(None, parse_overrides([*tiny_vit_overrides(), "precision=fp8", "parallel=fsdp"]))


def test_a_run_trains_resumes_exactly_and_exports_a_plain_model(tmp_path: Path):
    def run(out: Path, resume: str | None = None):
        config = load_config(None, parse_overrides([*RUN, f"output_dir={out}"]))
        return train(config, Runtime(), resume=resume)

    whole = run(tmp_path / "whole")
    assert all(math.isfinite(loss) for _, loss in whole.losses)
    run(tmp_path / "resumed", resume=str(tmp_path / "whole/checkpoints/step_00000002.pt"))
    a = clipforge.load(str(tmp_path / "whole/final"))[0]
    b = clipforge.load(str(tmp_path / "resumed/final"))[0]
    assert not any(isinstance(m, Float8Linear) for m in a.modules())  # the export is the plain model
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
