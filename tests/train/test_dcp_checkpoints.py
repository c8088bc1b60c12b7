"""Distributed Checkpoint folders in one process: save/resume, a save killed midway, asynchronous saves, crafted and
foreign checkpoints, ``clipforge convert`` consolidation, and the options ``parallel: fsdp`` refuses."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.cli.main import main as cli
from clipforge.config import ConfigError
from clipforge.train import Runtime, load_config, parse_overrides, train
from clipforge.train.checkpoint import CheckpointLoadError, resolve_checkpoint
from clipforge.train.dcp import ShardedCheckpoints, load_sharded, read_extra
from helpers.tiny import tiny_vit_overrides

RUN = [*tiny_vit_overrides(), "data.train_size=200", "eval.size=8", "eval.retrieval_size=4",
       "schedule.warmup_steps=1", "log_every=1", "batch_size=8", "plots=false", "parallel=fsdp", "steps=4",
       "checkpoint_every=2", "keep_checkpoints=5"]


def _train(out: Path, *extra: str, resume: str | None = None):
    return train(load_config(None, parse_overrides([*RUN, *extra, f"output_dir={out}"])), Runtime(), resume=resume)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return clipforge.load(str(directory))[0].state_dict()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dcp") / "run"
    _train(out)
    return out


def test_a_run_writes_folders_and_resumes_exactly(run: Path, tmp_path: Path):
    checkpoints = run / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_00000004"
    record = json.loads((checkpoints / "step_00000004.json").read_text())
    assert {".metadata", "extra.pt"} <= set(record["files"])
    extra = read_extra(checkpoints / "step_00000004")
    assert extra["step"] == 4 and extra["config"]["parallel"] == "fsdp" and len(extra["rng"]) == 1

    resumed = _train(tmp_path / "resumed", resume=str(checkpoints / "step_00000002"))
    assert [s for s, _ in resumed.losses] == [3, 4]
    final, again = _weights(run / "final"), _weights(tmp_path / "resumed" / "final")
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_a_save_killed_midway_resumes_from_the_previous_checkpoint(run: Path, tmp_path: Path):
    checkpoints = shutil.copytree(run / "checkpoints", tmp_path / "checkpoints")
    # Killed after its shards were written but before the record and ``latest``: no record, ``latest`` unmoved.
    shutil.copytree(checkpoints / "step_00000004", checkpoints / "step_00000006")
    assert resolve_checkpoint("latest", checkpoints) == checkpoints / "step_00000004"
    # ``latest`` names a folder whose shard was cut short: the newest complete one is used, with a warning.
    (checkpoints / "latest").write_text("step_00000006\n")
    with pytest.warns(UserWarning, match="newest intact"):
        assert resolve_checkpoint("latest", checkpoints) == checkpoints / "step_00000004"
    shard = checkpoints / "step_00000004" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    (checkpoints / "latest").write_text("step_00000004\n")
    with pytest.warns(UserWarning, match="step_00000002"):
        assert resolve_checkpoint("latest", checkpoints) == checkpoints / "step_00000002"


def test_an_asynchronous_save_becomes_latest_only_when_complete(tmp_path: Path):
    model = clipforge.create_model("tiny-vit", embed_dim=16)
    optimizer = torch.optim.AdamW(model.parameters())
    size, context = model.config.vision.image_size, model.config.text.context_length
    model(torch.randn(2, 3, size, size), torch.randint(1, 100, (2, context)))[0].sum().backward()
    optimizer.step()
    saver = ShardedCheckpoints(tmp_path, Runtime(), keep=2, asynchronous=True)
    extra = {"step": 1, "config": {}, "rng": [], "model_config": {}}
    path = saver.save(1, model, optimizer, extra)
    assert not (tmp_path / "latest").exists()  # in flight: not yet a checkpoint to resume from
    saver.wait()
    assert (tmp_path / "latest").read_text().strip() == path.name
    fresh = clipforge.create_model("tiny-vit", embed_dim=16)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters())
    assert load_sharded(path, fresh, fresh_optimizer)["step"] == 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    saved, loaded = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys() and len(saved) < len(list(model.parameters()))  # logit_scale had no grad
    assert all(torch.equal(saved[i]["exp_avg_sq"], loaded[i]["exp_avg_sq"]) for i in saved)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_a_crafted_index_or_extra_runs_nothing(run: Path, tmp_path: Path):
    folder = shutil.copytree(run / "checkpoints" / "step_00000004", tmp_path / "step_00000004")
    _Exploit.marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointLoadError, match="posix.system|os.system"):
        _train(tmp_path / "victim", resume=str(folder))
    shutil.copy(run / "checkpoints" / "step_00000004" / ".metadata", folder / ".metadata")
    (folder / "extra.pt").write_bytes(pickle.dumps({"step": 4, "format": "dcp", "x": _Exploit()}))
    with pytest.raises(CheckpointLoadError, match="extra.pt"):
        _train(tmp_path / "victim", resume=str(folder))
    assert not _Exploit.marker.exists()


def test_a_checkpoint_of_another_model_is_refused_by_name(run: Path, tmp_path: Path):
    with pytest.raises(CheckpointLoadError, match=r"another model: .*shape"):
        _train(tmp_path / "wider", "model_overrides.vision.width=64", resume=str(run / "checkpoints/step_00000004"))


def test_convert_consolidates_a_sharded_checkpoint(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    assert cli(["convert", str(run / "checkpoints" / "step_00000004"), str(tmp_path / "model"), "--to",
                "clipforge"]) == 0
    final, converted = _weights(run / "final"), _weights(tmp_path / "model")
    assert all(torch.equal(final[k], converted[k]) for k in final)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "named"), [(["lora.rank=4"], "lora"), (["unlock.image_blocks=1"], "unlock")])
def test_fsdp_names_the_option_it_cannot_combine_with(extra: list[str], named: str):
    with pytest.raises(ConfigError, match=f"parallel: fsdp does not combine with {named}"):
        load_config(None, parse_overrides(["parallel=fsdp", *extra]))


def test_checkpoints_at_an_fsspec_url_save_and_resume(run: Path, tmp_path: Path):
    fsspec = pytest.importorskip("fsspec")
    url = "memory://clipforge-test/run/checkpoints"
    try:
        _train(tmp_path / "remote", f"checkpoint_dir={url}")
        memory = fsspec.filesystem("memory")
        assert memory.cat(f"{url}/latest").decode().strip() == "step_00000004"
        assert not (tmp_path / "remote" / "checkpoints").exists()
        memory.rm(f"{url}/step_00000004.json")  # as if killed before the record: the newest complete one is used
        with pytest.warns(UserWarning, match="step_00000002"):
            resumed = _train(tmp_path / "resumed", f"checkpoint_dir={url}", resume="latest")
        assert [s for s, _ in resumed.losses] == [3, 4]
        final, again = _weights(run / "final"), _weights(tmp_path / "resumed" / "final")
        assert all(torch.equal(final[k], again[k]) for k in final)
    finally:
        fsspec.filesystem("memory").rm("memory://clipforge-test", recursive=True)


def test_a_url_checkpoint_dir_needs_fsdp():
    with pytest.raises(ConfigError, match="parallel: fsdp"):
        load_config(None, parse_overrides(["checkpoint_dir=s3://bucket/run"]))


def test_cpu_offload_on_a_cpu_device_is_refused_by_name(tmp_path: Path):
    with pytest.raises(ValueError, match="fsdp.cpu_offload .* needs CUDA"):
        _train(tmp_path / "offload", "fsdp.cpu_offload=true")


def test_a_checkpoint_url_without_its_package_is_named_before_any_step(tmp_path: Path, monkeypatch):
    pytest.importorskip("fsspec")
    import sys

    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed, even where it is
    registry = sys.modules["fsspec.registry"]._registry
    monkeypatch.delitem(registry, "s3", raising=False)
    with pytest.raises(ImportError, match="s3fs"):
        _train(tmp_path / "s3", "checkpoint_dir=s3://bucket/run/checkpoints")
    assert not (tmp_path / "s3" / "metrics.jsonl").exists()
