"""Micro-batching: the views of requests that arrive close together go through the model
in one call.

One thread owns the model. It takes the oldest waiting request, then keeps taking
requests for up to ``max_wait_s`` or until ``max_batch_size`` views are stacked, runs
the model once on all of them, and hands each request its rows. A request with more
views than ``max_batch_size`` runs alone. ``max_batch_size=1`` (or ``max_wait_s=0`` with
one client) is plain one-request-at-a-time serving.

Requests are ``concurrent.futures.Future`` s, awaited from asyncio with
``asyncio.wrap_future``: a request whose caller gave up (a timeout) is cancelled, and
the thread drops it if it has not started yet.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a model call."""

    scores: Tensor          # (V, K): this request's rows
    queue_s: float          # submitted -> its batch started
    model_s: float          # the model call (the whole batch)
    batch_views: int        # views in that call, all requests together
    batch_requests: int     # requests in that call


@dataclass
class _Request:
    views: Tensor
    future: Future
    submitted: float


class BatcherClosed(RuntimeError):
    """Submitted after :meth:`MicroBatcher.close`."""


class MicroBatcher:
    """Runs ``run(views) -> scores`` ((B, ...) -> (B, K)) on batches gathered from
    concurrent :meth:`submit` calls, in one thread."""

    def __init__(self, run: Callable[[Tensor], Tensor], max_batch_size: int = 16,
                 max_wait_s: float = 0.01,
                 on_batch: Callable[[int, int, float], None] | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be at least 0, got {max_wait_s}")
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch  # (views, requests, model seconds), e.g. for metrics
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="mar-model", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the batch running now)."""
        return self._queue.qsize()

    def submit(self, views: Tensor) -> Future:
        """Queue one request's (V, ...) views; the future gives a :class:`BatchResult`."""
        with self._lock:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            future: Future = Future()
            self._queue.put(_Request(views, future, time.perf_counter()))
        return future

    def close(self, timeout: float | None = None) -> None:
        """Finish every request already submitted, then stop the thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join(timeout)

    def _gather(self, first: _Request) -> tuple[list[_Request], _Request | None, bool]:
        """The batch that starts with ``first``; the request that did not fit (it starts
        the next batch); whether the stop sign was met."""
        batch, size = [first], first.views.shape[0]
        deadline = time.perf_counter() + self.max_wait_s
        while size < self.max_batch_size:
            try:
                item = self._queue.get(timeout=max(deadline - time.perf_counter(), 0))
            except queue.Empty:
                break
            if item is None:
                return batch, None, True
            if not item.future.set_running_or_notify_cancel():
                continue  # its caller gave up while it waited
            if size + item.views.shape[0] > self.max_batch_size:
                return batch, item, False
            batch.append(item)
            size += item.views.shape[0]
        return batch, None, False

    def _loop(self) -> None:
        carry, stop = None, False
        while True:
            first = carry
            if first is None:
                if stop:
                    return
                first = self._queue.get()
                if first is None:
                    return
                if not first.future.set_running_or_notify_cancel():
                    continue
            batch, carry, met_stop = self._gather(first)
            stop = stop or met_stop
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        start = time.perf_counter()
        try:
            scores = self.run(torch.cat([r.views for r in batch]))
        except Exception as e:  # every request of the batch gets the error
            for r in batch:
                r.future.set_exception(e)
            return
        model_s = time.perf_counter() - start
        views = sum(r.views.shape[0] for r in batch)
        if self.on_batch is not None:
            self.on_batch(views, len(batch), model_s)
        row = 0
        for r in batch:
            n = r.views.shape[0]
            r.future.set_result(BatchResult(scores[row:row + n], start - r.submitted,
                                            model_s, views, len(batch)))
            row += n
