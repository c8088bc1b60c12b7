"""``clipforge index`` and ``clipforge search`` end to end over a real collection (saved random-weight tiny-vit),
including their one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers_serve import make_collection

import clipforge.cli.main as cli_main

pytest.importorskip("faiss")
N = 40


@pytest.fixture(autouse=True)
def with_verbs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verbs registered whether or not main.py lists the module yet."""
    if "clipforge.cli.search" not in cli_main.VERB_MODULES:
        monkeypatch.setattr(cli_main, "VERB_MODULES", [*cli_main.VERB_MODULES, "clipforge.cli.search"])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_collection(tmp_path_factory.mktemp("cli") / "c", n=N, part_size=16)


@pytest.fixture
def collection(made: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "c"
    shutil.copytree(made, copy)
    return copy


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_index_prints_and_records_the_entry(collection: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["index", str(collection)], capsys)
    entry = json.loads(out)
    assert code == 0 and entry["kind"] == "flat" and "exact search" in entry["reason"] and entry["n"] == N
    assert json.loads((collection / "index.json").read_text(encoding="utf-8"))["indices"]["image"] == entry
    code, out, _ = run(["index", str(collection), "--kind", "ivf", "--memory", "10M"], capsys)
    assert code == 0 and json.loads(out)["kind"] == "ivf" and (collection / "index" / "image.faiss").is_file()
    code, out, _ = run(["search", str(collection), "--text", "a red circle", "--k", "3", "--json"], capsys)
    assert code == 0 and json.loads(out)["index"] == "ivf"


def test_index_errors(collection: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["index", str(collection), "--memory", "1K"], capsys)
    assert code == 2 and err.startswith("clipforge index: error: memory budget") and "needs" in err
    code, _, err = run(["index", str(collection), "--memory", "lots"], capsys)
    assert code == 2 and "memory budget 'lots'" in err
    code, _, err = run(["index", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no such collection folder" in err
    code, _, err = run(["index", str(collection), "--modality", "text"], capsys)
    assert code == 2 and "no text embeddings" in err
    with pytest.raises(SystemExit) as e:
        cli_main.main(["index", str(collection), "--kind", "annoy"])
    assert e.value.code == 2 and "invalid choice: 'annoy'" in capsys.readouterr().err


def test_search_text_and_image(collection: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["search", str(collection), "--text", "a blue square", "--k", "4"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 4 and lines[0].split()[0] == "1" and "id" in lines[0]
    scores = [float(line.split()[3]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    image = collection / "images" / "00009.png"
    code, out, _ = run(["search", str(collection), "--image", str(image), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["index"] == "exact" and len(data["results"]) == 10
    assert data["results"][0]["id"] == 9 and data["results"][0]["path"].endswith("images/00009.png")


def test_search_errors(collection: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from clipforge.api import create_model, get_text_processor
    from clipforge.checkpoints.native import save_pretrained

    torch.manual_seed(7)
    net = create_model("tiny-vit")
    other = save_pretrained(net, tmp_path / "other", get_text_processor(net))
    code, _, err = run(["search", str(collection), "--text", "a red circle", "--model", str(other)], capsys)
    assert code == 2 and err.startswith("clipforge search: error:") and "fingerprint" in err
    code, _, err = run(["search", str(collection), "--image", str(tmp_path / "missing.jpg")], capsys)
    assert code == 2 and "clipforge search: error:" in err
    (tmp_path / "page.jpg").write_text("<html></html>")
    code, _, err = run(["search", str(collection), "--image", str(tmp_path / "page.jpg")], capsys)
    assert code == 2 and "--image" in err
    code, _, err = run(["search", str(collection), "--text", "  "], capsys)
    assert code == 2 and "empty" in err
    for argv in (["search", str(collection)], ["search", str(collection), "--text", "x", "--k", "0"],
                 ["search", str(collection), "--text", "x", "--image", "y.png"]):
        with pytest.raises(SystemExit) as e:
            cli_main.main(argv)
        assert e.value.code == 2
    capsys.readouterr()


def test_a_large_collection_says_what_is_under_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers_index import clustered, write_collection

    big = write_collection(tmp_path / "big", clustered(100_000, 8), part_size=50_000)
    code, out, err = run(["index", str(big), "--kind", "flat"], capsys)
    assert code == 0 and json.loads(out)["n"] == 100_000  # stdout stays the JSON entry alone
    lines = err.splitlines()
    assert lines[0].startswith("indexing 100,000 image embeddings") and lines[1].startswith("built flat (Flat)")
