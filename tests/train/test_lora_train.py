"""LoRA adapter sets on disk (clipforge.train.lora) and LoRA runs: round trip, fingerprint check, resume, final dir."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.checkpoints.native import save_pretrained
from clipforge.config import ConfigError
from clipforge.models.factory import build_model
from clipforge.models.lora import LoRAConfig, apply_lora, lora_config, lora_state_dict
from clipforge.train import Runtime, load_config, parse_overrides, prepare, train
from clipforge.train.checkpoint import load_checkpoint
from clipforge.train.lora import ADAPTER_WEIGHTS, AdapterError, load_adapters, save_adapters
from helpers.tiny import tiny_vit_overrides

ROOT = Path(__file__).parents[2]
ARCH = tiny_vit_overrides()
RUN = ["data.train_size=200", "eval.size=10", "eval.retrieval_size=4", "schedule.warmup_steps=1", "batch_size=8",
       "log_every=1", "plots=false", "optim.lr=1e-2", "lora.rank=4"]


def pretrained(seed: int = 3) -> torch.nn.Module:
    """A small 'pretrained' CLIP: the architecture of ARCH with seeded random weights."""
    torch.manual_seed(seed)
    return build_model(load_config(None, parse_overrides(ARCH)).model_config())


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randint(1, 100, (2, 16), generator=g)


def trained_adapters(base: torch.nn.Module) -> torch.nn.Module:
    model = apply_lora(copy.deepcopy(base), LoRAConfig(rank=4, targets=("attn", "mlp")))
    with torch.no_grad():
        for name, tensor in lora_state_dict(model).items():
            tensor.normal_(generator=torch.Generator().manual_seed(len(name)))  # as if trained: B off zero
    return model.eval()


def test_adapters_round_trip_onto_a_fresh_base(tmp_path: Path) -> None:
    base = pretrained()
    model = trained_adapters(base)
    directory = save_adapters(model, tmp_path / "adapters")
    saved = (directory / ADAPTER_WEIGHTS).stat().st_size
    assert saved < sum(t.numel() * 4 for t in lora_state_dict(model).values()) + 4096  # the adapters alone
    fresh = load_adapters(pretrained(), directory).eval()  # a plain base: the saved config is applied first
    assert lora_config(fresh) == lora_config(model)
    images, text = batch()
    with torch.no_grad():
        a, b = model(images, text), fresh(images, text)
    assert torch.equal(a.image_features, b.image_features) and torch.equal(a.text_features, b.text_features)
    again = load_adapters(apply_lora(pretrained(), LoRAConfig(rank=4)), directory)  # adapters there: replaced
    assert all(torch.equal(v, lora_state_dict(model)[k]) for k, v in lora_state_dict(again).items())


def test_adapters_refuse_another_base(tmp_path: Path) -> None:
    directory = save_adapters(trained_adapters(pretrained()), tmp_path / "adapters")
    with pytest.raises(AdapterError, match="trained on the base model with fingerprint .* this model's is"):
        load_adapters(pretrained(seed=4), directory)
    with pytest.raises(AdapterError, match="config .* differs"):
        load_adapters(apply_lora(pretrained(), LoRAConfig(rank=2)), directory)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapters(pretrained(), tmp_path)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_adapters(pretrained(), tmp_path / "none")


def test_lora_config_fields_and_clear_errors(tmp_path: Path) -> None:
    config = load_config(None, parse_overrides(["lora.rank=16", "lora.towers=[text]", "lora.targets=[attn]"]))
    assert config.lora == LoRAConfig(rank=16, towers=("text",), targets=("attn",))
    assert load_config(None, {}).lora is None
    with pytest.raises(ConfigError, match="lora"):
        load_config(None, parse_overrides(["lora.rank=0"]))
    with pytest.raises(ConfigError, match="lora.towers instead of lock"):
        load_config(None, parse_overrides(["lora.rank=4", "lock=image"]))
    with pytest.raises(ConfigError, match="lora: adapters fine-tune a trained model.*preset"):
        prepare(load_config(None, parse_overrides([*ARCH, "lora.rank=4"])))
    source = save_pretrained(pretrained(), tmp_path / "pretrained")
    with pytest.raises(ConfigError, match="'pool' matches no linear layer"):
        prepare(load_config(None, parse_overrides([f"model={source}", "lora.targets=[pool]"])))


# With adapter dropout too: the DataLoader (train/data.py) has its own generator, so the restored RNG gives the
# resumed run the uninterrupted run's dropout masks.
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_lora_run_resumed_ends_where_an_uninterrupted_one_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 one_thread: None, capsys, dropout: float) -> None:
    base = pretrained()
    source = save_pretrained(base, tmp_path / "pretrained")
    args = [*RUN, f"model={source}", "steps=4", "checkpoint_every=2", f"lora.dropout={dropout}"]
    reference = train(load_config(None, parse_overrides([*args, f"output_dir={tmp_path / 'reference'}"])), Runtime())
    printed = capsys.readouterr().out
    assert "lora: rank 4 on 8 layers (attn, mlp of image and text): 4,096 trainable parameters" in printed

    import clipforge.train.loop as loop

    calls, forward_backward = [], loop.forward_backward

    def dies_at_the_third_step(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run stops after its step-2 checkpoint
        return forward_backward(*a, **k)

    config = load_config(None, parse_overrides([*args, f"output_dir={tmp_path / 'resumed'}"]))
    monkeypatch.setattr(loop, "forward_backward", dies_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        train(config, Runtime())
    monkeypatch.setattr(loop, "forward_backward", forward_backward)
    resumed = train(config, Runtime(), resume="latest")
    assert "at step 2" in capsys.readouterr().out
    assert [s for s, _ in resumed.losses] == [3, 4]
    assert [v for _, v in resumed.losses] == pytest.approx([v for _, v in reference.losses[2:]], abs=1e-6)
    a = load_checkpoint(tmp_path / "reference/checkpoints/step_00000004.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed/checkpoints/step_00000004.pt")["model"]
    assert a.keys() == b.keys() and any(k.endswith("lora_B") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run took other steps"
    for k, v in base.state_dict().items():
        assert torch.equal(a[k], v), f"{k}: a base weight changed"  # only the adapters trained

    # The final dir: the merged model, which loads anywhere, and the adapters alone.
    final = tmp_path / "reference/final"
    merged, _, _ = clipforge.load(str(final))
    adapted = load_adapters(pretrained(), final / "adapters").eval()
    images, text = batch()
    with torch.no_grad():
        x, y = merged.eval()(images, text), adapted(images, text)
    assert (x.image_features - y.image_features).abs().max() < 1e-5
    assert (x.text_features - y.text_features).abs().max() < 1e-5
    assert not torch.equal(x.image_features, base.eval()(images, text).image_features)  # the run changed it


def test_the_shipped_lora_config_fits_the_quickstart_model(tmp_path: Path, one_thread: None) -> None:
    """configs/finetune_lora.yaml on a model of the quickstart's architecture (tiny-rn, 2 text layers), 2 steps."""
    quickstart = load_config(ROOT / "configs/quickstart.yaml")
    torch.manual_seed(0)
    source = save_pretrained(clipforge.create_model(quickstart.model, **quickstart.model_overrides), tmp_path / "qs")
    config = load_config(ROOT / "configs/finetune_lora.yaml", parse_overrides([
        f"model={source}", "steps=2", "batch_size=8", "schedule.warmup_steps=1", "checkpoint_every=0",
        "eval.size=10", "eval.retrieval_size=4", "plots=false", "data.train_size=100",
        f"output_dir={tmp_path / 'run'}"]))
    assert config.lora is not None and config.lora.targets == ("attn", "mlp", "pool")
    train(config, Runtime())
    assert (tmp_path / "run/final/model.safetensors").is_file()
    # A ResNet's BatchNorm statistics stayed the base's, so the adapters still fit it (the fingerprint check).
    assert lora_config(load_adapters(clipforge.load(str(source))[0], tmp_path / "run/final/adapters")) == config.lora
