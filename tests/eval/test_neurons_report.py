"""The neurons report in a real browser: headless Chromium (tests/helpers/browser.py) opens the self-contained page
from disk and shows every unit's panels, every image decoded, with no request leaving the page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from clipforge.api import create_model, get_text_processor
from clipforge.eval.adapter import EvalModel
from clipforge.eval.datasets import EvalDataset, Sample
from clipforge.eval.neurons import analyse, write
from clipforge.transforms import EvalTransform

pytest.importorskip("playwright.sync_api")

from helpers.browser import launched_chromium

pytestmark = pytest.mark.usefixtures("one_thread")  # an oversubscribed OpenMP pool is several times slower

VIT = {"embed_dim": 16, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
       "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}
PANELS = ("top-images", "quantiles", "top-words", "top-texts", "feature-visualisation")


class Squares(EvalDataset):
    """Coloured squares on white, two classes."""

    def __init__(self, n: int = 24) -> None:
        super().__init__(classes=["red", "blue"])
        self.n = n

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self.n):
            image = Image.new("RGB", (40, 40), (255, 255, 255))
            image.paste((200, 20, 20) if i % 2 == 0 else (20, 20, 200), (4 + i % 9, 4 + i % 7, 24 + i % 9, 24 + i % 7))
            yield Sample(image, label=i % 2, source=f"square:{i}")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("tiny-vit", **VIT)
    em = EvalModel(model, EvalTransform(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), get_text_processor(model), "cpu")
    result = analyse(em, Squares(), "embedding", vocabulary=["synthetic"], top_units=3, k=4, n_words=3,
                     featvis_steps=2)
    out = tmp_path_factory.mktemp("neurons")
    write(result, out)
    torch.set_num_threads(threads)
    yield out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium() as b:
        yield b


def test_the_page_shows_every_units_panels(report: Path, browser: Any) -> None:
    data = json.loads((report / "neurons.json").read_text())
    units = [u["unit"] for u in data["units"]]
    assert len(units) == 3 and [s["unit"] for s in data["ranking"]] == units
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: problems.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    page.goto((report / "index.html").as_uri())
    page.wait_for_load_state("load")
    shown = page.evaluate("""() => [...document.querySelectorAll('section.unit')].map(s => ({
        unit: Number(s.dataset.unit),
        panels: [...s.querySelectorAll('.panel')].filter(p => p.getBoundingClientRect().height > 0)
                                                  .map(p => p.classList[1]),
        images: [...s.querySelectorAll('img')].map(i => i.complete && i.naturalWidth > 0),
    }))""")
    assert [s["unit"] for s in shown] == units
    for s in shown:
        assert tuple(s["panels"]) == PANELS, s
        assert len(s["images"]) == 4 + 4 + 3 + 1 and all(s["images"])  # top k, quantiles, words, feature vis.
    ranking = page.locator("#ranking tr").count()
    assert ranking == 1 + len(units)
    assert problems == []
    context.close()
    for u in units:
        with Image.open(report / f"unit-{u}.png") as grid:
            assert grid.width >= 4 * 96 and grid.height > 3 * 96
