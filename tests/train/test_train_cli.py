"""``clipforge train`` argument mistakes are one-line errors naming the argument, with exit status 2."""

from __future__ import annotations

import pytest

from clipforge.cli.main import main


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--threads", "0"], "--threads: expected a whole number ≥ 1, got 0"),
    (["train", "--threads", "-1"], "--threads: expected a whole number ≥ 1, got -1"),
    (["quickstart", "--threads", "two"], "--threads: expected a whole number ≥ 1, got 'two'"),
    (["train", "steps=2", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "steps=[1"], "override steps: '[1' is not a valid YAML value"),
    (["train", "steps=0"], "steps must be positive"),
    (["train", "model=tiny-vt"], "unknown model 'tiny-vt'"),
])
def test_bad_overrides_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cuda_without_cuda_is_a_clear_error(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "steps=1", "schedule.warmup_steps=0", "--device", "cuda"]) == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err


def test_overrides_may_follow_options(tmp_path, monkeypatch):
    """``a=1 --resume latest b=2``: both overrides reach the config (argparse alone rejects the second)."""
    import clipforge.train as train_package

    seen = {}

    def fake_train(config, runtime, resume=None, prepared=None):
        seen.update(steps=config.steps, batch_size=config.batch_size, resume=resume)
        raise KeyboardInterrupt  # stop before any work; main() answers 130

    monkeypatch.setattr(train_package, "train", fake_train)
    assert main(["train", "steps=3", "--resume", "latest", "schedule.warmup_steps=1", "batch_size=4",
                 f"output_dir={tmp_path}"]) == 130
    assert seen == {"steps": 3, "batch_size": 4, "resume": "latest"}
