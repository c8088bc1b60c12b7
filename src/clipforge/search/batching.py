"""Micro-batching: concurrent requests' items collected for a few milliseconds and processed in one call.

A text tower run on 32 queries at once costs little more than on one (on a GPU almost nothing more; on a CPU the
per-call overhead and the small matrix products are what batching saves), so a server that encodes each request
on its own wastes most of the model's throughput. :class:`MicroBatcher` sits between the request handlers and the
model: a handler submits its items (one text, one image, the prompts of a classification) and awaits a future;
one worker thread takes the first waiting request, keeps collecting more until ``max_wait_ms`` have passed or
``max_items`` are waiting, runs the function once on all their items, and hands each request its slice of the
results. Under no load a request waits at most ``max_wait_ms``; under load the batches fill up and the throughput
grows with the number of concurrent clients (``benchmarks/serve.py`` measures it).

The function runs on the worker thread only, so a model that is not safe to call from several threads at once is
never called so, and the event loop is never blocked by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class BatchStats:
    """What a batcher has done, for ``/healthz`` and the benchmarks.

    Attributes:
        requests: Requests completed (each ``submit`` call is one).
        items: Items processed.
        batches: Calls of the function.
        multi_request_batches: Batches that held more than one request (the ones batching paid for).
        largest_batch: Most items in one call.
        errors: Batches whose function raised (each of their requests got the exception).
    """

    requests: int = 0
    items: int = 0
    batches: int = 0
    multi_request_batches: int = 0
    largest_batch: int = 0
    errors: int = 0
    busy_s: float = field(default=0.0, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The counters as JSON-ready values, with the mean items per batch."""
        return {"requests": self.requests, "items": self.items, "batches": self.batches,
                "multi_request_batches": self.multi_request_batches, "largest_batch": self.largest_batch,
                "mean_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
                "errors": self.errors, "busy_s": round(self.busy_s, 3)}


@dataclass
class _Request(Generic[Item, Result]):
    items: list[Item]
    future: Future[list[Result]]


class MicroBatcher(Generic[Item, Result]):
    """Runs ``fn`` on batches of items gathered from concurrent callers, on one worker thread.

    Args:
        fn: Items → one result per item, in order (a list, or an array whose first axis is the items).
        max_items: Most items gathered into one call (a single request with more still runs, alone).
        max_wait_ms: How long the first request of a batch waits for others.
        name: The worker thread's name.

    Raises:
        ValueError: ``max_items`` < 1 or ``max_wait_ms`` < 0.
    """

    def __init__(self, fn: Callable[[list[Item]], Sequence[Result]], max_items: int = 64, max_wait_ms: float = 5.0,
                 name: str = "clipforge-batcher"):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.fn = fn
        self.max_items = max_items
        self.max_wait = max_wait_ms / 1000
        self.name = name
        self.stats = BatchStats()
        self._queue: queue.Queue[_Request[Item, Result] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, items: Sequence[Item]) -> Future[list[Result]]:
        """Queues ``items``; the future gets their results (or the exception ``fn`` raised on their batch).

        Raises:
            RuntimeError: the batcher is closed.
            ValueError: no items.
        """
        if not items:
            raise ValueError("nothing to submit: no items")
        future: Future[list[Result]] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            if self._thread is None:  # started on first use: an app built but never served starts no thread
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._queue.put(_Request(list(items), future))
        return future

    async def run(self, items: Sequence[Item]) -> list[Result]:
        """``submit`` for a coroutine: awaits the results without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(items))

    def __call__(self, items: Sequence[Item]) -> list[Result]:
        """``submit`` and wait (for callers on ordinary threads)."""
        return self.submit(items).result()

    def close(self, timeout: float = 5.0) -> None:
        """Stops the worker after the requests already queued; later ``submit`` calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join(timeout)

    # -- the worker -----------------------------------------------------------------------------------------------

    def _gather(self, first: _Request[Item, Result]) -> tuple[list[_Request[Item, Result]], bool]:
        """The first request and those arriving within ``max_wait`` (up to ``max_items`` items); whether the
        sentinel (close) was seen."""
        batch, count = [first], len(first.items)
        deadline = time.perf_counter() + self.max_wait
        while count < self.max_items:
            remaining = deadline - time.perf_counter()
            try:
                request = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if request is None:
                return batch, True
            if count + len(request.items) > self.max_items:
                self._run(batch)  # this one would overflow the batch: it starts the next one
                batch, count = [request], len(request.items)
                deadline = time.perf_counter() + self.max_wait
                continue
            batch.append(request)
            count += len(request.items)
        return batch, False

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, closing = self._gather(first)
            self._run(batch)
            if closing:
                while True:  # finish what was queued before close()
                    try:
                        rest = self._queue.get_nowait()
                    except queue.Empty:
                        return
                    if rest is not None:
                        self._run([rest])

    def _run(self, batch: list[_Request[Item, Result]]) -> None:
        items = [item for request in batch for item in request.items]
        start = time.perf_counter()
        try:
            results = self.fn(items)
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: the batch function returned {len(results)} results for "
                                   f"{len(items)} items")
        except BaseException as e:  # each waiting request gets the error; the worker lives on
            self.stats.errors += 1
            for request in batch:
                with contextlib.suppress(InvalidStateError):  # cancelled meanwhile (its client went away)
                    request.future.set_exception(e)
            return
        finally:
            self.stats.busy_s += time.perf_counter() - start
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.requests += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        self.stats.multi_request_batches += len(batch) > 1
        offset = 0
        for request in batch:
            n = len(request.items)
            with contextlib.suppress(InvalidStateError):
                request.future.set_result(list(results[offset:offset + n]))
            offset += n
