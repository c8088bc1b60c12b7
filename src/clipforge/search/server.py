"""``clipforge serve``: a collection behind an HTTP API (FastAPI under uvicorn) and a web page.

Routes (``/openapi.json`` describes them all)::

    GET  /healthz        model name, collection size, batching counters; never needs the token
    POST /search         {"text": s} | {"image": base64} | {"embedding": [floats]}, "k" → the k nearest items
    POST /classify       {"image": base64, "labels": [s], "templates": [s]?} → each label's probability
    GET  /images/{id}    a JPEG thumbnail of collection item ``id`` (0 … size-1; nothing else is ever read)
    GET  /               the web page (``static/``), which calls the routes above

Every bad input is answered with a 4xx and a JSON body ``{"error": "<what was wrong>"}``: malformed JSON, wrong
types, unknown fields, not exactly one query, an image that does not decode or is a decompression bomb
(``clipforge.data.decode`` under :attr:`ServerLimits.decode`), ``k`` outside ``1 … max_k``, a text over
``max_text_chars``, a body over ``max_body_bytes`` (checked on ``Content-Length`` and on the bytes actually
streamed), an unknown id, an embedding of the wrong dimension or with non-finite values.

With a token every route but ``/healthz`` and the page's own files needs ``Authorization: Bearer TOKEN``; the page
asks for the token (or reads it from the URL fragment, ``/#token=...``, which browsers never send to a server) and
sends it as that header, thumbnails included (it fetches them as blobs), so the token never appears in a URL.

Queries from concurrent requests are encoded and searched in shared batches (:mod:`clipforge.search.batching`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import io
import math
import sys
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.data.decode import BadSample, DecodeLimits, decode_image
from clipforge.search.batching import MicroBatcher
from clipforge.search.schemas import (
    DEFAULT_TEMPLATE,
    ERRORS,
    ClassifyRequest,
    ClassifyResponse,
    HealthResponse,
    LabelProbability,
    SearchRequest,
    SearchResponse,
    SearchResult,
)

try:
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("clipforge serve needs FastAPI and uvicorn: pip install 'clipforge[server]'") from None

STATIC = Path(__file__).parent / "static"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for, and how queries are batched.

    Attributes:
        max_k: Most results one search returns.
        max_text_chars: Longest text query (models read 32–77 tokens anyway).
        max_body_bytes: Largest request body (a base64 image is 4/3 of its file).
        max_labels: Most labels in one classification.
        max_templates: Most prompt templates in one classification.
        max_label_chars: Longest label or template.
        thumbnail: Longest side of a ``/images`` thumbnail, in pixels.
        thumbnail_cache: Thumbnails kept in memory (about 10 kB each).
        classifier_cache: Label sets whose text embeddings are kept (the page classifies one image after another
            against the same labels).
        decode: Limits on query images (pixels, bytes, formats); the server's default allows 25 Mpx.
        batch_items: Most queries encoded in one batch.
        batch_wait_ms: How long a batch of model inputs waits for more (while the model is busy, queries queue up
            and form the next batch anyway).
    """

    max_k: int = 100
    max_text_chars: int = 1000
    max_body_bytes: int = 16 << 20
    max_labels: int = 100
    max_templates: int = 16
    max_label_chars: int = 200
    thumbnail: int = 256
    thumbnail_cache: int = 1024
    classifier_cache: int = 64
    decode: DecodeLimits = field(default_factory=lambda: DecodeLimits(max_pixels=25_000_000,
                                                                      max_image_bytes=12 << 20))
    batch_items: int = 64
    batch_wait_ms: float = 2.0


# -- the body-size guard ------------------------------------------------------------------------------------------

class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before the app sees it.

    ``Content-Length`` is checked first; the bytes are counted as they stream in too (a chunked body has no
    length, and a client may lie), and the body, once whole, is replayed to the app.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _send_error(send, 400, f"Content-Length {length[:40]!r} is not a number of bytes")
                return
            if int(length) > self.limit:
                await _send_error(send, 413, f"request body of {int(length)} bytes is over the {self.limit}-byte "
                                             "limit")
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _send_error(send, 413, f"request body over the {self.limit}-byte limit")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_error(send: Callable[[Message], Awaitable[None]], status: int, message: str) -> None:
    response = JSONResponse({"error": message}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# -- the app ------------------------------------------------------------------------------------------------------

class LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """The value, or ``None``."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        """Stores ``value``, dropping the oldest entry when full."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=message)


def decode_query_image(data: str, limits: DecodeLimits, what: str = "image") -> Any:
    """A base64 (or ``data:`` URL) image string → RGB PIL image.

    Raises:
        HTTPException: 422 naming ``what`` when it is not base64 or does not decode within ``limits``.
    """
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _unprocessable(f"{what}: not valid base64") from None
    if not raw:
        raise _unprocessable(f"{what}: empty")
    try:
        return decode_image(raw, limits)
    except BadSample as e:
        raise _unprocessable(f"{what}: {e}") from None


def load_searcher(directory: str | Path, device: str | None = None, model: str | None = None,
                  backend: str | None = None) -> Any:
    """The :class:`~clipforge.search.searcher.Searcher` of a collection directory (its index when it has one);
    ``backend`` ``torch`` or ``onnx`` (default: the one the collection was embedded with)."""
    from clipforge.search.collection import Collection
    from clipforge.search.searcher import Searcher

    return Searcher(Collection.open(directory), device=device, model=model, backend=backend)


def create_app(source: Any, token: str | None = None, limits: ServerLimits | None = None,
               device: str | None = None, model: str | None = None, backend: str | None = None) -> FastAPI:
    """The FastAPI app serving a collection.

    Args:
        source: A collection directory, or a ready ``Searcher`` (its collection and model are used).
        token: When given, every route but ``/healthz`` and the page needs ``Authorization: Bearer <token>``.
        limits: Request limits and batching (:class:`ServerLimits`).
        device: Where the model runs (a directory ``source`` only).
        model: Another spelling of the collection's model (a moved checkpoint; a directory ``source`` only).
        backend: ``torch`` or ``onnx`` (onnxruntime on the CPU, the towers exported into ``DIR/onnx/``); default:
            the one the collection was embedded with (a directory ``source`` only).

    Raises:
        ValueError: ``source`` is not a finished collection, or ``model`` is not the one it was embedded with.
        ImportError: the onnx backend without onnxruntime.
    """
    limits = limits or ServerLimits()
    searcher = load_searcher(source, device, model, backend) if isinstance(source, (str, Path)) else source
    collection = searcher.collection
    eval_model = searcher.model
    info = collection.model
    thumbnails, classifiers = LRU(limits.thumbnail_cache), LRU(limits.classifier_cache)

    def search_batch(queries: list[tuple[np.ndarray, int]]) -> list[list[dict[str, Any]]]:
        k = max(q[1] for q in queries)
        found = searcher.search_vectors(np.stack([q[0] for q in queries]), k)  # one index search for all
        return [results[:q[1]] for q, results in zip(queries, found, strict=True)]

    batchers: dict[str, MicroBatcher[Any, Any]] = {
        "text": MicroBatcher(searcher.encode_texts, limits.batch_items, limits.batch_wait_ms, "clipforge-text"),
        "image": MicroBatcher(searcher.encode_images, limits.batch_items, limits.batch_wait_ms, "clipforge-image"),
        # An exact or faiss search takes about a millisecond: batched only when searches pile up, never waited for.
        "search": MicroBatcher(search_batch, limits.batch_items, 0.0, "clipforge-search"),
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for batcher in batchers.values():
            batcher.close()

    # No /docs or /redoc: FastAPI's pages load scripts from a CDN; /openapi.json describes the API.
    app = FastAPI(title="clipforge search", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"Search {collection.size} items embedded with {info.get('name')} "
                              f"({collection.directory.name}).")
    app.state.searcher, app.state.batchers, app.state.limits = searcher, batchers, limits
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    _add_error_handlers(app)
    auth = [Depends(_bearer_check(token))] if token is not None else []

    @app.get("/healthz", response_model=HealthResponse, summary="liveness, model and collection size")
    def healthz() -> HealthResponse:
        return HealthResponse(status="ok", model=str(info.get("name")), family=str(info.get("family", "clip")),
                              scoring=eval_model.scoring, size=collection.size, dim=collection.dim,
                              backend=str(getattr(eval_model, "backend", "torch")),
                              auth=token is not None,
                              batching={name: b.stats.as_dict() for name, b in batchers.items()})

    async def query_vector(body: SearchRequest) -> np.ndarray:
        if body.text is not None:
            if len(body.text) > limits.max_text_chars:
                raise _unprocessable(f"text: {len(body.text)} characters, over the {limits.max_text_chars} limit")
            if not body.text.strip():
                raise _unprocessable("text: empty")
            return (await batchers["text"].run([body.text]))[0]
        if body.image is not None:
            image = await run_in_threadpool(decode_query_image, body.image, limits.decode)
            return (await batchers["image"].run([image]))[0]
        vector = np.asarray(body.embedding, dtype=np.float64)
        if vector.shape != (collection.dim,):
            raise _unprocessable(f"embedding: {vector.size} values, expected {collection.dim}")
        peak = float(np.abs(vector).max()) if np.isfinite(vector).all() else math.nan
        if not math.isfinite(peak) or peak == 0:
            raise _unprocessable("embedding: values must be finite and not all zero")
        vector = vector / peak  # first to at most 1, so that the norm of huge values does not overflow
        return (vector / np.linalg.norm(vector)).astype(np.float32)

    @app.post("/search", response_model=SearchResponse, dependencies=auth, responses=ERRORS,
              summary="the items nearest to a text, an image or a vector")
    async def search(body: SearchRequest) -> SearchResponse:
        if body.k > limits.max_k:
            raise _unprocessable(f"k: {body.k} is over the limit of {limits.max_k}")
        vector = await query_vector(body)
        results = (await batchers["search"].run([(vector, min(body.k, collection.size))]))[0]
        return SearchResponse(results=[SearchResult(id=int(r["id"]), score=float(r["score"]), path=str(r["path"]),
                                                    caption=str(r["caption"] or "")) for r in results])

    async def label_vectors(labels: list[str], templates: list[str]) -> np.ndarray:
        key = (tuple(labels), tuple(templates))
        cached = classifiers.get(key)
        if cached is not None:
            return cached
        prompts = [t.replace("{c}", label).replace("{}", label) for label in labels for t in templates]
        emb = np.stack(await batchers["text"].run(prompts)).reshape(len(labels), len(templates), -1).mean(axis=1)
        weights = emb / np.linalg.norm(emb, axis=1, keepdims=True)  # (L, D): build_classifier's maths
        classifiers.put(key, weights)
        return weights

    @app.post("/classify", response_model=ClassifyResponse, dependencies=auth, responses=ERRORS,
              summary="zero-shot probabilities of labels for an image")
    async def classify(body: ClassifyRequest) -> ClassifyResponse:
        import torch

        templates = body.templates or [DEFAULT_TEMPLATE]
        if len(body.labels) > limits.max_labels:
            raise _unprocessable(f"labels: {len(body.labels)}, over the limit of {limits.max_labels}")
        if len(templates) > limits.max_templates:
            raise _unprocessable(f"templates: {len(templates)}, over the limit of {limits.max_templates}")
        for what, texts in (("labels", body.labels), ("templates", templates)):
            for i, text in enumerate(texts):
                if not text.strip() or len(text) > limits.max_label_chars:
                    raise _unprocessable(f"{what}[{i}]: must be 1 to {limits.max_label_chars} characters")
        for i, template in enumerate(templates):
            if "{}" not in template and "{c}" not in template:
                raise _unprocessable(f"templates[{i}]: {template!r} has no {{}} where the label goes")
        image = await run_in_threadpool(decode_query_image, body.image, limits.decode)
        vector = (await batchers["image"].run([image]))[0]
        weights = await label_vectors(body.labels, templates)
        similarities = weights @ vector  # (L,)
        probs = eval_model.probabilities(torch.from_numpy(similarities[None].astype(np.float32)))[0].tolist()
        order = np.argsort(-np.asarray(probs), kind="stable")
        return ClassifyResponse(scoring=eval_model.scoring, results=[
            LabelProbability(label=body.labels[i], probability=float(probs[i]), similarity=float(similarities[i]))
            for i in order])

    @app.get("/images/{item}", dependencies=auth, responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
             response_class=Response, summary="a JPEG thumbnail of a collection item")
    def image(item: int = PathParam(ge=0, description="the item's id, 0 … size-1")) -> Response:
        if item >= collection.size:
            raise HTTPException(status_code=404, detail=f"no item {item} in a collection of {collection.size}")
        jpeg = thumbnails.get(item)
        if jpeg is None:
            try:
                picture = collection.image(item)
            except (BadSample, OSError, ValueError) as e:
                raise HTTPException(status_code=404, detail=f"item {item}: its image cannot be read ({e})") from None
            picture.thumbnail((limits.thumbnail, limits.thumbnail))
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=85)
            jpeg = buffer.getvalue()
            thumbnails.put(item, jpeg)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    page_headers = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=page_headers)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _bearer_check(token: str) -> Callable[..., None]:
    expected = token.encode()
    bearer = HTTPBearer(auto_error=False, description="the --token given to `clipforge serve`")

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = credentials.credentials.encode() if credentials is not None else b""
        if credentials is None or not hmac.compare_digest(given, expected):
            raise HTTPException(status_code=401, detail="missing or wrong token: send Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": message}``; validation errors list each problem (without echoing the input)."""

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            position = next(e["loc"][-1] for e in errors if e["type"] == "json_invalid")
            return JSONResponse({"error": f"body: not valid JSON (at character {position})"}, status_code=422)
        message = "; ".join(f"{'.'.join(e['loc'][1:] if e['loc'][:1] == ['body'] else e['loc']) or 'body'}: "
                            f"{e['msg']}" for e in errors[:5])
        return JSONResponse({"error": message or "invalid request", "errors": errors[:20]}, status_code=422)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)


def serve(source: Any, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          device: str | None = None, model: str | None = None, limits: ServerLimits | None = None,
          log_level: str = "info", backend: str | None = None) -> None:
    """Runs the app under uvicorn until interrupted (see :func:`create_app` for the arguments)."""
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("clipforge serve needs FastAPI and uvicorn: pip install 'clipforge[server]'") from None
    app = create_app(source, token=token, limits=limits, device=device, model=model, backend=backend)
    shown = f"[{host}]" if ":" in host else host
    print(f"clipforge serve: http://{shown}:{port}/ (the API: /openapi.json)", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
