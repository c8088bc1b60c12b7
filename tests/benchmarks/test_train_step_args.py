"""``benchmarks/train_step.py``'s caption-length options on a tiny model, and the shipped length histogram."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import clipforge
from clipforge.models.text import trim_tokens

ROOT = Path(__file__).resolve().parents[2]
LENGTHS = ROOT / "benchmarks" / "data" / "caption_lengths.json"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_step", ROOT / "benchmarks" / "train_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_histogram_matches_its_stated_summary() -> None:
    """The mean and quantiles written in the file are those of its histogram; the source figures are stated."""
    data = json.loads(LENGTHS.read_text(encoding="utf-8"))
    hist = {int(k): v for k, v in data["histogram"].items()}
    total = sum(hist.values())
    assert math.isclose(total, 1.0, abs_tol=1e-5)
    assert min(hist) >= 2 and max(hist) <= 77
    assert math.isclose(sum(k * p for k, p in hist.items()) / total, data["tokens_mean"], abs_tol=0.01)
    for q, stated in data["tokens_quantiles"].items():
        acc = 0.0
        for length in sorted(hist):
            acc += hist[length] / total
            if acc >= float(q) - 1e-9:
                break
        assert length == stated, q
    source = data["source"]
    assert source["url"].startswith("https://") and {"mean", "std", "median", "units"} <= source.keys()
    check = data["check"]  # the word-count model reproduces the published figures
    assert abs(check["mean"] - source["mean"]) < 0.05 and abs(check["std"] - source["std"]) < 0.05
    assert check["median"] == source["median"]


def test_token_batches_follow_the_histogram(script: ModuleType) -> None:
    config = clipforge.create_model("ViT-B/32", device="meta").config
    (tokens,) = script.token_batches(config, 4096, "real", 1)
    assert tokens.shape == (4096, 77)
    ends = tokens.argmax(dim=-1)  # OpenAI's rule: end-of-text is the highest id
    assert (tokens[torch.arange(4096), ends] == 49407).all() and (tokens[:, 0] == 49406).all()
    after = torch.arange(77) > ends[:, None]
    assert (tokens[after] == 0).all() and (tokens[~after] != 0).all()
    stated = json.loads(LENGTHS.read_text(encoding="utf-8"))["tokens_mean"]
    assert abs((ends + 1).float().mean().item() - stated) < 0.5  # 4,096 draws: within a few standard errors
    (full,) = script.token_batches(config, 8, "full", 1)
    assert (full.argmax(dim=-1) == 76).all()
    assert trim_tokens(tokens, config.text).shape[1] < 77 and trim_tokens(full, config.text).shape[1] == 77


@pytest.mark.parametrize("mode", ["real", "full"])
def test_script_runs_both_sides_with_the_same_ids(script: ModuleType, mode: str, one_thread: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("open_clip")
    report = script.main(["--model", "tiny-vit", "--batch-size", "8", "--steps", "1", "--warmup", "0",
                          "--text-batches", "1", "--caption-lengths", mode, "--loss-chunk-size", "3"])
    assert json.loads(capsys.readouterr().out) == report
    ours, ref = report["results"]
    assert (ours["impl"], ref["impl"]) == ("clipforge", "open_clip")
    assert ref["text_tokens_mean"] == 32  # tiny-vit's context: open_clip always runs the padded ids
    if mode == "real":
        assert ours["text_tokens_mean"] < 32 and report["flops_ratio"] < 1
    else:
        assert ours["text_tokens_mean"] == 32 and report["flops_ratio"] == pytest.approx(1.0, abs=0.01)
    assert report["speedup"] > 0 and report["loss_chunk_size"] == 3


def test_bad_options_are_errors(script: ModuleType) -> None:
    with pytest.raises(SystemExit):
        script.parse_args(["--batch-size", "10", "--accum-steps", "4"])
    with pytest.raises(SystemExit):
        script.parse_args(["--caption-lengths", "short"])


def test_bucket_text_row_runs_fewer_text_positions_on_real_lengths(script: ModuleType, one_thread: Any,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``--bucket-text`` adds a clipforge row on the same batches whose text tower runs each length group cut to its
    own longest caption: fewer positions a caption and fewer FLOPs than the trimmed row (real caption lengths)."""
    report = script.main(["--model", "tiny-vit", "--batch-size", "32", "--steps", "1", "--warmup", "0",
                          "--text-batches", "1", "--caption-lengths", "real", "--bucket-text", "--no-reference"])
    assert json.loads(capsys.readouterr().out) == report
    trimmed, bucketed = report["results"]
    assert (trimmed["impl"], bucketed["impl"]) == ("clipforge", "clipforge bucket_text")
    assert bucketed["text_tokens_mean"] < trimmed["text_tokens_mean"] <= 32
    assert bucketed["gflops_per_step"] < trimmed["gflops_per_step"] and report["bucket_speedup"] > 0


def test_fp8_converts_clipforge_alone_and_says_so(script: ModuleType, one_thread: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``--precision fp8`` trains clipforge's linear layers in float8 (emulated on the CPU) beside open_clip in
    bf16, and the report names both precisions."""
    pytest.importorskip("torchao")
    pytest.importorskip("open_clip")
    report = script.main(["--model", "tiny-vit", "--batch-size", "8", "--steps", "1", "--warmup", "0",
                          "--text-batches", "1", "--precision", "fp8", "--fp8-emulate"])
    assert json.loads(capsys.readouterr().out) == report
    assert report["precision"] == "fp8" and report["reference_precision"] == "bf16"
    assert report["fp8_recipe"] == "tensorwise" and report["fp8_emulate"] is True
    linears = sum(type(m) is torch.nn.Linear for m in clipforge.create_model("tiny-vit", device="meta").modules())
    assert report["fp8_linear_layers"] == linears > 0  # tiny-vit's dimensions are all multiples of 16
    assert [r["impl"] for r in report["results"]] == ["clipforge", "open_clip"]
