"""``clipforge models``: the presets, OpenCLIP's names and the released checkpoints loadable by name."""

from __future__ import annotations

import pytest

import clipforge
from clipforge.checkpoints.hub import open_clip_aliases, pretrained_registry, split_tag
from clipforge.cli.main import main


def lines(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(argv) == 0
    return capsys.readouterr().out.splitlines()


def test_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert lines(["models"], capsys) == clipforge.list_models()


def test_open_clip_names_with_their_presets(capsys: pytest.CaptureFixture[str]) -> None:
    rows = dict(line.split() for line in lines(["models", "--open-clip"], capsys))
    assert rows == {name: alias["preset"] for name, alias in open_clip_aliases().items()}
    assert rows["ViT-B-16-SigLIP"] == "SigLIP-B/16" and rows["ViT-L-14-336"] == "ViT-L/14@336"


def test_every_listed_pretrained_name_resolves(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [line.split() for line in lines(["models", "--pretrained"], capsys)]
    assert len(rows) == sum(len(tags) for tags in pretrained_registry().values()) > 100
    for spelled, repo in rows:
        model, tag = split_tag(spelled, None)  # what clipforge.load("MODEL:TAG") does with the printed name
        assert tag is not None, spelled
        assert repo == "hf-hub:" + pretrained_registry()[model][tag]["repo"]
