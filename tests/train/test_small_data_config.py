"""configs/small_data.yaml: the recipe it ships (its keys and learning rate) is the icon benchmark's
``clipforge+small_data`` row, and it trains on a folder of tar shards as its comment says."""

from __future__ import annotations

import io
import math
from pathlib import Path

import yaml
from PIL import Image

from clipforge.train import Runtime, load_config, parse_overrides, train

ROOT = Path(__file__).resolve().parents[2]
RECIPE_KEYS = ("slip", "declip", "augment", "label_smoothing")


def test_the_shipped_recipe_is_the_benchmarks_row():
    shipped = yaml.safe_load((ROOT / "configs/small_data.yaml").read_text(encoding="utf-8"))
    row = yaml.safe_load((ROOT / "benchmarks/icons/recipes.yaml").read_text(encoding="utf-8"))["clipforge+small_data"]
    assert {**{k: shipped[k] for k in RECIPE_KEYS}, "optim": {"lr": shipped["optim"]["lr"]},
            "batch_size": shipped["batch_size"]} == row
    assert shipped["steps"] * shipped["batch_size"] == 400 * 64  # the benchmark's budget: 25,600 samples
    config = load_config(ROOT / "configs/small_data.yaml", {})
    assert config.slip is not None and config.declip is not None and config.label_smoothing == 0.03
    assert config.optim.lr == 2e-3 and config.batch_size == 128  # 4x the plain recipe's lr, 2x its batch
    assert config.augment is not None and config.augment.stroke == 0.5


def test_it_trains_on_your_own_shards(tmp_path: Path):
    from clipforge.data.writer import write_shards

    def sample(i: int) -> tuple[bytes, bytes, dict]:
        buffer = io.BytesIO()
        Image.new("RGBA", (64, 64), (0, 0, 0, 0)).rotate(i).save(buffer, format="PNG")
        return buffer.getvalue(), f"an icon of thing {i}\nthing {i}".encode(), {}

    write_shards(sample, 16, tmp_path / "shards", shard_size=8, progress=False)
    config = load_config(ROOT / "configs/small_data.yaml", parse_overrides([
        f"data.urls={tmp_path / 'shards'}", "eval.sets=[]", "steps=2", "batch_size=8", "schedule.warmup_steps=1",
        "log_every=1", "plots=false", f"output_dir={tmp_path / 'run'}", "declip.queue_size=8",
        "model_overrides.text.layers=1"]))
    result = train(config, Runtime())
    assert math.isfinite(result.losses[-1][1]) and (tmp_path / "run/final").is_dir()
