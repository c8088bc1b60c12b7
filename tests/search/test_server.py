"""``clipforge serve``'s HTTP API: known answers for each route, every bad input a 4xx JSON error (never a 5xx),
the bearer token, the body-size guard, concurrency through the micro-batcher, and the OpenAPI description."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("pyarrow")

from fastapi.testclient import TestClient
from helpers_serve import draw, live_server, make_collection
from PIL import Image

from clipforge.search.batching import MicroBatcher
from clipforge.search.collection import Collection
from clipforge.search.searcher import Searcher
from clipforge.search.server import ServerLimits, create_app
from helpers.images import corrupt_png, encode, noise, png_bomb

N = 120
TOKEN = "s3cret-token"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_of(i: int) -> bytes:
    return encode(draw(i)[0], "PNG")


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_collection(tmp_path_factory.mktemp("serve") / "coll", n=N)


@pytest.fixture(scope="module")
def searcher(collection_dir: Path) -> Searcher:
    return Searcher(Collection.open(collection_dir), device="cpu")


@pytest.fixture(scope="module")
def client(searcher: Searcher):
    with TestClient(create_app(searcher)) as c:
        yield c


def assert_error(response: Any, status: int | tuple[int, ...] | None = None) -> dict[str, Any]:
    """A 4xx whose body is a JSON object with an ``error`` message."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code in ((status,) if isinstance(status, int) else status), response.text[:300]
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    return body


# -- each route's known answer ------------------------------------------------------------------------------------

def test_healthz_names_the_model_and_size(client: TestClient, searcher: Searcher) -> None:
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["size"] == N and body["dim"] == searcher.dim
    assert body["model"] == searcher.collection.model["name"] and body["scoring"] == "softmax"
    assert set(body["batching"]) == {"text", "image", "search"}


def test_text_search_returns_k_results_sorted_by_score(client: TestClient, searcher: Searcher) -> None:
    response = client.post("/search", json={"text": "a red circle", "k": 7})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 7 and set(results[0]) == {"id", "score", "path", "caption"}
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert [r["id"] for r in results] == [r["id"] for r in searcher.search_text("a red circle", k=7)[0]]
    assert len(client.post("/search", json={"text": "x"}).json()["results"]) == 10  # the default k


def test_an_items_own_image_finds_it_first(client: TestClient) -> None:
    for i in (3, 77):
        results = client.post("/search", json={"image": b64(png_of(i)), "k": 3}).json()["results"]
        assert results[0]["id"] == i and results[0]["score"] > 0.99
        assert results[0]["path"].endswith(f"{i:05d}.png") and f"item {i})" in results[0]["caption"]
    data_url = "data:image/png;base64," + b64(png_of(5))  # what the page sends
    assert client.post("/search", json={"image": data_url, "k": 1}).json()["results"][0]["id"] == 5


def test_an_embedding_query_is_normalised_and_k_is_capped_at_the_size(client: TestClient,
                                                                     searcher: Searcher) -> None:
    row = searcher.collection.embeddings()[42] * 3.0  # not unit length: the score is still a cosine
    results = client.post("/search", json={"embedding": row.tolist(), "k": 100}).json()["results"]
    assert results[0]["id"] == 42 and results[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert len(results) == 100 and len({r["id"] for r in results}) == 100
    huge = (row.astype(np.float64) / np.abs(row).max() * 1e308).tolist()
    huge = client.post("/search", json={"embedding": huge, "k": 1})
    assert huge.status_code == 200 and huge.json()["results"][0]["id"] == 42  # a direction, however long


def test_classify_matches_the_models_own_probabilities(client: TestClient, searcher: Searcher) -> None:
    import torch

    from clipforge.eval.zeroshot import build_classifier

    labels, templates = ["a white circle", "a red square", "a blue triangle"], ["a photo of {}.", "art of {}."]
    image = draw(7)[0]
    response = client.post("/classify", json={"image": b64(encode(image, "PNG")), "labels": labels,
                                              "templates": templates})
    assert response.status_code == 200, response.text
    body = response.json()
    got = {r["label"]: r["probability"] for r in body["results"]}
    assert body["scoring"] == "softmax" and sum(got.values()) == pytest.approx(1.0, abs=1e-5)
    assert [r["probability"] for r in body["results"]] == sorted(got.values(), reverse=True)
    model = searcher.model
    weights = build_classifier(model, labels, templates, use_cache=False)  # (D, L)
    expected = model.probabilities(torch.from_numpy(searcher.encode_images([image])) @ weights)[0]
    assert [got[label] for label in labels] == pytest.approx(expected.tolist(), abs=1e-4)


def test_images_serves_a_jpeg_thumbnail(client: TestClient) -> None:
    response = client.get("/images/11")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert thumb.format == "JPEG" and max(thumb.size) <= 256
    original = np.asarray(draw(11)[0].resize(thumb.size), np.float32)
    assert np.abs(np.asarray(thumb.convert("RGB"), np.float32) - original).mean() < 20  # the item's picture


def test_the_page_and_its_files_are_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert f"/static/{name}" in page.text and client.get(f"/static/{name}").status_code == 200
    static = Path(__file__).parents[2] / "src" / "clipforge" / "search" / "static"
    for path in static.iterdir():  # nothing from elsewhere: no CDN, no web fonts
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "@import" not in text, path.name


def test_openapi_describes_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/healthz", "/search", "/classify", "/images/{item}"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"SearchRequest", "SearchResponse", "ClassifyRequest", "ClassifyResponse", "ErrorResponse"} <= set(schemas)
    assert {"text", "image", "embedding", "k"} == set(schemas["SearchRequest"]["properties"])
    assert "image/jpeg" in spec["paths"]["/images/{item}"]["get"]["responses"]["200"]["content"]


# -- bad input: a 4xx JSON error every time -----------------------------------------------------------------------

BAD_SEARCH: list[tuple[str, Any]] = [
    ("not JSON", b"{"), ("a JSON list", b"[]"), ("a JSON string", b'"a red circle"'), ("null", b"null"),
    ("empty body", b""), ("not UTF-8", b"\xff\xfe\x00{"), ("deeply nested", b"[" * 100_000),
    ("text a number", {"text": 5}), ("text a list", {"text": ["a"]}), ("k a string", {"text": "a", "k": "3"}),
    ("k a float", {"text": "a", "k": 2.5}), ("k a bool", {"text": "a", "k": True}), ("k zero", {"text": "a", "k": 0}),
    ("k negative", {"text": "a", "k": -1}), ("k over the limit", {"text": "a", "k": 101}),
    ("k huge", {"text": "a", "k": 10**30}), ("unknown field", {"query": "a red circle"}),
    ("no query", {"k": 3}), ("two queries", {"text": "a", "image": b64(png_of(1))}),
    ("text too long", {"text": "a" * 1001}), ("text empty", {"text": ""}), ("text blank", {"text": " \n\t"}),
    ("image not base64", {"image": "not base64!!"}), ("image empty", {"image": ""}),
    ("image not an image", {"image": b64(b"hello, world" * 10)}), ("image corrupt", {"image": b64(corrupt_png())}),
    ("image a bomb", {"image": b64(png_bomb(30_000, 30_000))}),
    ("image too small", {"image": b64(encode(noise(2, 2)))}),
    ("image a number", {"image": 12}), ("embedding wrong dimension", {"embedding": [0.1] * 5}),
    ("embedding empty", {"embedding": []}), ("embedding strings", {"embedding": ["a"] * 128}),
    ("embedding nested", {"embedding": [[0.1]] * 128}), ("embedding zeros", {"embedding": [0.0] * 128}),
    ("embedding NaN", b'{"embedding": [NaN' + b", 0.1" * 127 + b"]}"),
    ("embedding Infinity", b'{"embedding": [Infinity' + b", 0.1" * 127 + b"]}"),
]


@pytest.mark.parametrize("body", [b for _, b in BAD_SEARCH], ids=[name for name, _ in BAD_SEARCH])
def test_bad_search_requests_are_4xx_json(client: TestClient, body: Any) -> None:
    if isinstance(body, bytes):
        response = client.post("/search", content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post("/search", json=body)
    assert_error(response)


GOOD_IMAGE = b64(png_of(2))
BAD_CLASSIFY: list[tuple[str, Any]] = [
    ("no labels", {"image": GOOD_IMAGE, "labels": []}), ("labels a string", {"image": GOOD_IMAGE, "labels": "a,b"}),
    ("a label a number", {"image": GOOD_IMAGE, "labels": ["a", 3]}), ("no image", {"labels": ["a"]}),
    ("a blank label", {"image": GOOD_IMAGE, "labels": ["a", "  "]}),
    ("a label too long", {"image": GOOD_IMAGE, "labels": ["a" * 201]}),
    ("too many labels", {"image": GOOD_IMAGE, "labels": [f"l{i}" for i in range(101)]}),
    ("a template without {}", {"image": GOOD_IMAGE, "labels": ["a"], "templates": ["a photo"]}),
    ("no templates", {"image": GOOD_IMAGE, "labels": ["a"], "templates": []}),
    ("too many templates", {"image": GOOD_IMAGE, "labels": ["a"], "templates": ["{}"] * 17}),
    ("image a bomb", {"image": b64(png_bomb(30_000, 30_000)), "labels": ["a"]}),
    ("image not base64", {"image": "@@@", "labels": ["a"]}), ("unknown field", {"image": GOOD_IMAGE, "label": ["a"]}),
]


@pytest.mark.parametrize("body", [b for _, b in BAD_CLASSIFY], ids=[name for name, _ in BAD_CLASSIFY])
def test_bad_classify_requests_are_4xx_json(client: TestClient, body: Any) -> None:
    assert_error(client.post("/classify", json=body))


@pytest.mark.parametrize("path, status", [
    ("/images/-1", 422), (f"/images/{N}", 404), ("/images/99999999999999999999999", 404), ("/images/abc", 422),
    ("/images/1.5", 422), ("/images/0x1", 422), ("/images/%2e%2e%2fembed.json", (404, 422)),
    ("/images/..%2F..%2Fetc%2Fpasswd", (404, 422)), ("/images/1/../../embed.json", (404, 422)),
    ("/images/%00", 422), ("/images/", 404), ("/static/../embed.json", 404), ("/static/%2e%2e/server.py", 404),
    ("/nowhere", 404),
])
def test_ids_outside_the_collection_and_path_tricks_are_refused(client: TestClient, path: str,
                                                                status: int | tuple[int, ...]) -> None:
    assert_error(client.get(path), status)


def test_wrong_methods_and_content_types_are_4xx(client: TestClient) -> None:
    assert_error(client.get("/search"), 405)
    assert_error(client.post("/search", content=b'{"text": "a"}', headers={"Content-Type": "text/plain"}))


def test_bodies_over_the_limit_are_413_by_length_and_by_stream(searcher: Searcher) -> None:
    app = create_app(searcher, limits=ServerLimits(max_body_bytes=2000))
    with TestClient(app) as c:
        assert c.post("/search", json={"text": "a"}).status_code == 200
        assert_error(c.post("/search", json={"text": "a" * 3000}), 413)

        def chunks():  # no Content-Length: the guard counts what streams in
            for _ in range(10):
                yield b" " * 500

        assert_error(c.post("/search", content=chunks(), headers={"Content-Type": "application/json"}), 413)
        assert_error(c.post("/search", content=b"{}", headers={"Content-Length": "x2"}), 400)


def test_unexpected_model_errors_do_not_kill_the_batcher() -> None:
    def fn(items: list[int]) -> list[int]:
        if 13 in items:
            raise RuntimeError("unlucky")
        return [x * 2 for x in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(fn, max_items=8, max_wait_ms=1)
    with pytest.raises(RuntimeError, match="unlucky"):
        batcher([13])
    assert batcher([1, 2, 3]) == [2, 4, 6] and batcher.stats.errors == 1
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher([1])


def test_the_batcher_hands_each_caller_its_own_results() -> None:
    seen: list[int] = []

    def fn(items: list[int]) -> list[int]:
        seen.append(len(items))
        time.sleep(0.01)
        return [x * x for x in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(fn, max_items=16, max_wait_ms=20)
    out: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, batcher([i, i + 100]))) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert out == {i: [i * i, (i + 100) ** 2] for i in range(40)}
    assert max(seen) <= 16 and max(seen) > 2 and sum(seen) == 80  # batched, never over max_items


# -- the token ----------------------------------------------------------------------------------------------------

def test_the_token_guards_every_route_but_healthz_and_the_page(searcher: Searcher) -> None:
    with TestClient(create_app(searcher, token=TOKEN)) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/healthz").json()["auth"] is True
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200  # no data in them
        good = {"Authorization": f"Bearer {TOKEN}"}
        for bad in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"},
                    {"Authorization": "Bearer é".encode()}):
            response = c.post("/search", json={"text": "a"}, headers=bad)
            assert_error(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
            assert_error(c.get("/images/0", headers=bad), 401)
            assert_error(c.post("/classify", json={"image": GOOD_IMAGE, "labels": ["a"]}, headers=bad), 401)
        assert c.post("/search", json={"text": "a"}, headers=good).status_code == 200
        assert c.get("/images/0", headers=good).status_code == 200
        assert "HTTPBearer" in c.get("/openapi.json", headers=good).json()["components"]["securitySchemes"]


# -- concurrency --------------------------------------------------------------------------------------------------

def test_concurrent_requests_share_batches_and_get_their_own_answers(searcher: Searcher) -> None:
    import httpx

    texts = [f"a {c} shape number {i}" for i, c in enumerate(["red", "green", "blue", "white"] * 8)]
    expected = [[r["id"] for r in hits] for hits in searcher.search_text(texts, k=5)]
    app = create_app(searcher, limits=ServerLimits(batch_wait_ms=20))

    async def many(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            return await asyncio.gather(*(http.post("/search", json={"text": t, "k": 5}) for t in texts))

    with live_server(app) as url:
        responses = asyncio.run(many(url))
        stats = httpx.get(f"{url}/healthz").json()["batching"]
    assert [r.status_code for r in responses] == [200] * len(texts)
    got = [[hit["id"] for hit in r.json()["results"]] for r in responses]
    assert got == expected  # each request its own query's results, whatever batch it rode in
    assert stats["text"]["requests"] == len(texts) and stats["text"]["largest_batch"] > 1
    assert stats["text"]["multi_request_batches"] >= 1 and stats["text"]["batches"] < len(texts)


# -- the command line ---------------------------------------------------------------------------------------------

def test_the_serve_verb_passes_its_options_and_warns_off_loopback(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import clipforge.search.server as server
    from clipforge.cli import serve as verb

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server, "serve", lambda directory, **kw: calls.append({"directory": directory, **kw}))
    parser = argparse.ArgumentParser()
    verb.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "coll", "--host", "0.0.0.0", "--port", "9001", "--max-k", "50"])
    assert args.func(args) == 0
    assert calls[0]["host"] == "0.0.0.0" and calls[0]["port"] == 9001 and calls[0]["token"] is None
    assert calls[0]["limits"].max_k == 50 and calls[0]["directory"] == "coll"
    assert "without --token" in capsys.readouterr().err
    args = parser.parse_args(["serve", "coll", "--token", TOKEN])
    assert args.func(args) == 0 and calls[1]["host"] == "127.0.0.1" and calls[1]["token"] == TOKEN
    assert "warning" not in capsys.readouterr().err


def test_a_directory_that_is_not_a_collection_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="embed.json"):
        create_app(tmp_path)
    (tmp_path / "embed.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="format"):
        create_app(tmp_path)
