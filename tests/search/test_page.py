"""The search page in a real browser: headless Chromium (Debian's ``chromium``, see tests/helpers/browser.py) driven
by Playwright, against the real server on a free port. It types a query and sees thumbnails appear in score order,
searches by an uploaded and a dropped image, classifies an image, and uses a token; a screenshot of each state is
saved under the test's tmp dir (the path is printed).

The page runs under its own Content-Security-Policy (no eval), so waiting is done by polling ``page.evaluate``
(which the policy does not cover) instead of ``wait_for_function``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("pyarrow")
pytest.importorskip("playwright.sync_api")

from helpers_serve import draw, live_server, make_collection

from clipforge.search.collection import Collection
from clipforge.search.searcher import Searcher
from clipforge.search.server import create_app
from helpers.browser import launched_chromium
from helpers.images import encode

TOKEN = "page-token-1"


@pytest.fixture(scope="module")
def searcher(tmp_path_factory: pytest.TempPathFactory) -> Searcher:
    return Searcher(Collection.open(make_collection(tmp_path_factory.mktemp("page") / "coll", n=120)), device="cpu")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium() as b:
        yield b


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("page-screenshots")
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    p = context.new_page()
    p.problems = []  # console errors, page errors (a CSP violation is one) and requests to anywhere else
    p.on("console", lambda m: p.problems.append(m.text) if m.type == "error" else None)
    p.on("pageerror", lambda e: p.problems.append(str(e)))
    p.on("request", lambda r: p.problems.append(r.url) if not r.url.startswith(("http://127.0.0.1", "blob:",
                                                                                  "data:")) else None)
    yield p
    context.close()


def wait_until(page: Any, script: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            status, error = page.evaluate("[document.getElementById('status').textContent, "
                                          "document.getElementById('error').textContent]")
            raise AssertionError(f"timed out waiting for {script}; status: {status!r}, error: {error!r}")
        time.sleep(0.05)


RESULTS = "[...document.querySelectorAll('#results li')].map(li => ({id: +li.dataset.id, score: +li.dataset.score}))"
LOADED = ("(() => { const imgs = [...document.querySelectorAll('#results img')].slice(0, {n}); "
          "return imgs.length === {n} && imgs.every(i => i.complete && i.naturalWidth > 0); })()")


def results_after(page: Any, status_contains: str) -> list[dict[str, float]]:
    wait_until(page, f"(s => s.includes({status_contains!r}) && s.includes(' result'))"
                     "(document.getElementById('status').textContent)")  # "20 results for …", not "Searching …"
    return page.evaluate(RESULTS)


def test_search_by_text_image_and_drop_then_classify(searcher: Searcher, page: Any, shots: Path,
                                                     tmp_path: Path) -> None:
    with live_server(create_app(searcher)) as url:
        page.goto(url + "/")
        wait_until(page, "document.getElementById('about').textContent.includes('120 items')")
        assert page.evaluate("document.activeElement.id") == "query"  # the page opens ready to type

        page.keyboard.type("a red circle")
        page.keyboard.press("Enter")  # Enter submits
        results = results_after(page, "a red circle")
        assert len(results) == 20  # the default k on the page
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True)
        assert [r["id"] for r in results] == [h["id"] for h in searcher.search_text("a red circle", k=20)[0]]
        wait_until(page, LOADED.replace("{n}", "6"))  # thumbnails in view have loaded
        assert page.get_attribute("#status", "aria-live") == "polite"
        page.screenshot(path=str(shots / "1-text-query.png"), full_page=True)

        picture = tmp_path / "query-17.png"
        draw(17)[0].save(picture)
        page.set_input_files("#image-query", str(picture))
        results = results_after(page, "query-17.png")
        assert results[0]["id"] == 17 and results[0]["score"] > 0.99
        wait_until(page, LOADED.replace("{n}", "6"))
        page.screenshot(path=str(shots / "2-image-query.png"), full_page=True)

        data = base64.b64encode(encode(draw(33)[0], "PNG")).decode()
        page.evaluate("""data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], 'dropped-33.png', {type: 'image/png'}));
            document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer,
                                                                                  bubbles: true}));
        }""", data)
        results = results_after(page, "dropped-33.png")
        assert results[0]["id"] == 33

        page.click("#results li:nth-child(2) button")  # "Similar": the second result's thumbnail as the query
        second = results[1]["id"]
        assert results_after(page, f"items like #{second}")[0]["id"] == second

        labels = ["a white circle", "a red square", "a blue triangle"]
        page.set_input_files("#classify-image", str(picture))
        page.fill("#labels", "\n".join(labels))
        page.focus("#classify-form button")
        page.keyboard.press("Enter")
        wait_until(page, "document.getElementById('classify-status').textContent.includes('Most likely')")
        bars = page.evaluate("[...document.querySelectorAll('#probabilities li')].map(li => "
                             "({label: li.querySelector('.label').textContent, p: +li.dataset.probability}))")
        assert sorted(b["label"] for b in bars) == sorted(labels)
        assert sum(b["p"] for b in bars) == pytest.approx(1.0, abs=1e-4)  # CLIP: a softmax over the labels
        assert [b["p"] for b in bars] == sorted((b["p"] for b in bars), reverse=True)
        page.screenshot(path=str(shots / "3-classified.png"), full_page=True)
    assert page.problems == []


def test_every_control_is_labelled_and_reachable_by_keyboard(searcher: Searcher, page: Any) -> None:
    with live_server(create_app(searcher)) as url:
        page.goto(url + "/")
        unlabelled = page.evaluate("""[...document.querySelectorAll('input, select, textarea')]
            .filter(e => !document.querySelector(`label[for="${e.id}"]`)).map(e => e.id || e.outerHTML)""")
        assert unlabelled == []
        reached = []
        for _ in range(12):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
        assert reached[:4] == ["k", "Search", "image-query", "Access token"]  # the search panel's order
        assert "classify-image" in reached and "labels" in reached
    assert page.problems == []


def test_a_token_from_the_fragment_or_the_field(searcher: Searcher, page: Any, shots: Path) -> None:
    with live_server(create_app(searcher, token=TOKEN)) as url:
        page.goto(url + "/")
        wait_until(page, "document.getElementById('about').textContent.includes('token required')")
        page.fill("#query", "a blue square")
        page.press("#query", "Enter")
        wait_until(page, "document.getElementById('error').textContent.includes('token')")  # 401, shown
        assert page.evaluate("document.getElementById('token-box').open")
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        page.press("#query", "Enter")
        assert len(results_after(page, "a blue square")) == 20
        wait_until(page, LOADED.replace("{n}", "6"))  # thumbnails fetched with the header, shown as blobs
        assert page.evaluate("document.querySelector('#results img').src").startswith("blob:")

        page.evaluate("sessionStorage.clear()")
        page.goto("about:blank")
        page.goto(url + f"/#token={TOKEN}")  # a fresh page: the fragment, which the browser never sends
        wait_until(page, "document.getElementById('about').textContent.includes('120 items')")
        assert "token" not in page.url  # taken out of the address bar
        page.fill("#query", "a green triangle")
        page.press("#query", "Enter")
        assert len(results_after(page, "a green triangle")) == 20
        wait_until(page, LOADED.replace("{n}", "6"))
        page.screenshot(path=str(shots / "4-with-token.png"), full_page=True)
    # The 401s were answered as intended; everything else must be clean.
    assert [p for p in page.problems if "401" not in p] == []
