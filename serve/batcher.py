"""MicroBatcher: many callers, one backend. Requests queue; a worker thread forms batches of up to
`max_batch` images, waiting at most `max_wait_ms` after the first, runs one backend call, and hands
each caller its own result.

Decoding and preprocessing happen in the caller's thread (in parallel, and a bad image fails its own
caller at once); the worker only stacks, infers and post-processes. The queue is bounded (BusyError
when full), each request has a deadline (TimeoutError), and `close()` answers every queued request:
it finishes them (drain=True) or rejects them with a clear error. When the backend raises on a batch, each of
its requests is retried once, alone, so one poisoned input or a transient fault fails only the request it belongs
to; stats["retried"] counts them, and a request is never run more than twice.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nfdseg.errors import BusyError, NfdsegError
from nfdseg.preprocess import prepare_batch

from .prediction import Prediction
from .segmenter import Segmenter

log = logging.getLogger(__name__)


class ShutdownError(NfdsegError):
    """The batcher was closed before this request ran."""


class RequestTimeout(NfdsegError, TimeoutError):
    """A request waited longer than its deadline."""


@dataclass
class _Request:
    x: np.ndarray  # one preprocessed image (model input layout, no batch axis)
    size: tuple[int, int]
    with_probs: bool
    deadline: float
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


# The batcher's defaults, the one home of `nfdseg bench --max-wait-ms`, the demo's and the benchmarks' settings.
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_QUEUE = 256


class MicroBatcher:
    """Args: max_batch (images per backend call), max_wait_ms (how long the first request of a batch
    waits for company), max_queue (pending requests before BusyError), timeout_s (default deadline)."""

    def __init__(self, segmenter: Segmenter, max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 max_queue: int = DEFAULT_MAX_QUEUE, timeout_s: float = 30.0):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.seg = segmenter
        self.max_batch, self.max_wait, self.timeout_s = max_batch, max_wait_ms / 1000.0, timeout_s
        self._q: queue.Queue[_Request] = queue.Queue(maxsize=max_queue)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "batches": 0, "images": 0, "busy": 0, "timeouts": 0, "errors": 0,
                      "retried": 0}
        self._worker = threading.Thread(target=self._run, name="nfdseg-batcher", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ callers
    def submit(self, image: Any, bgr: bool = False, with_probs: bool = False, timeout_s: float | None = None) -> Future:
        """Queue one image; returns a Future of its Prediction. Raises InputError (bad image),
        BusyError (queue full) or ShutdownError (closed) at once."""
        if self._closed.is_set():
            raise ShutdownError("the batcher is closed", fix="create a new MicroBatcher")
        rgb = self.seg.decode(image, bgr)[0]
        x = prepare_batch([rgb], self.seg.manifest.preprocess, self.seg.normalize_in_graph)[0]
        return self.submit_prepared(x, rgb.shape[:2], with_probs, timeout_s)

    def submit_prepared(self, x: np.ndarray, size: tuple[int, int], with_probs: bool = False,
                        timeout_s: float | None = None) -> Future:
        """Queue one already preprocessed image (model input layout, no batch axis) whose result is wanted at
        `size` (height, width): the streaming runtime preprocesses in its own thread. Raises like `submit`."""
        if self._closed.is_set():
            raise ShutdownError("the batcher is closed", fix="create a new MicroBatcher")
        req = _Request(x, size, with_probs, time.perf_counter() + (timeout_s or self.timeout_s))
        try:
            self._q.put_nowait(req)
        except queue.Full:
            with self._lock:
                self.stats["busy"] += 1
            raise BusyError("the server is busy: the request queue is full",
                            seen=f"{self._q.maxsize} requests waiting", fix="retry shortly, or raise max_queue") from None
        with self._lock:
            self.stats["requests"] += 1
        if self._closed.is_set():  # closed between the check and the put: make sure it is answered
            self._reject_pending()
        return req.future

    def predict(self, image: Any, bgr: bool = False, with_probs: bool = False, timeout_s: float | None = None) -> Prediction:
        """Blocking: segment one image through the batcher."""
        t = timeout_s or self.timeout_s
        fut = self.submit(image, bgr, with_probs, t)
        try:
            return fut.result(timeout=t + 1.0)
        except FutureTimeout:
            fut.cancel()  # still queued: the worker skips it; already running: its result goes nowhere
            raise RequestTimeout(f"no result within {t:.1f}s", fix="raise timeout_s or lower the load") from None

    async def apredict(self, image: Any, bgr: bool = False, with_probs: bool = False) -> Prediction:
        """asyncio: await the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(image, bgr, with_probs))

    # ------------------------------------------------------------------ worker
    def _collect(self) -> list[_Request]:
        try:
            first = self._q.get(timeout=0.05)
        except queue.Empty:
            return []
        batch = [first]
        end = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = end - time.perf_counter()
            try:
                batch.append(self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if not batch:
                if self._closed.is_set() and self._q.empty():
                    return
                continue
            now = time.perf_counter()
            live = []
            for r in batch:
                # PENDING -> RUNNING, or False if the caller cancelled it (an asyncio caller that timed out):
                # from here on cancel() is refused, so setting the result below cannot fail for its batch mates
                if not r.future.set_running_or_notify_cancel():
                    continue
                if now > r.deadline:
                    r.future.set_exception(RequestTimeout("the request waited past its deadline in the queue",
                                                          seen=f"{(now - r.enqueued) * 1e3:.0f} ms",
                                                          fix="raise timeout_s or lower the load"))
                    with self._lock:
                        self.stats["timeouts"] += 1
                    continue
                live.append(r)
            if not live:
                continue
            try:
                self._answer(live, now)
            except Exception as e:  # a backend failure: retry each unanswered request of the batch once, alone
                failed = [r for r in live if not r.future.done()]
                log.warning("batch of %d failed (%s: %s); retrying its %d unanswered requests one by one, once",
                            len(live), type(e).__name__, e, len(failed))
                with self._lock:
                    self.stats["retried"] += len(failed)
                for r in failed:
                    try:
                        self._answer([r], now)
                    except Exception as e1:  # failed alone too: this request's own error reaches its caller
                        log.exception("request failed again when retried alone")
                        with self._lock:
                            self.stats["errors"] += 1
                        if not r.future.done():
                            r.future.set_exception(e1)
            with self._lock:
                self.stats["batches"] += 1
                self.stats["images"] += len(live)

    def _answer(self, reqs: list[_Request], now: float) -> None:
        """One backend call for `reqs` and each caller's result (raises what the backend or postprocess raises)."""
        out = self.seg.backend_infer_batch(np.stack([r.x for r in reqs]))
        for r, o in zip(reqs, out):
            pred = self.seg.postprocess(o[None], [r.size], r.with_probs)[0]
            pred.timings_ms = {"queue_ms": (now - r.enqueued) * 1e3, "batch_size": len(reqs)}
            r.future.set_result(pred)

    def describe(self) -> dict[str, Any]:
        """Settings and counters: requests, batches, images, busy, timeouts, errors (requests that failed) and
        retried (requests of a failed batch run again alone, once each)."""
        with self._lock:
            stats = dict(self.stats)
        return {"max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1e3, "timeout_s": self.timeout_s,
                "max_queue": self._q.maxsize, **stats}

    # ------------------------------------------------------------------ shutdown
    def _reject_pending(self) -> None:
        while True:
            try:
                r = self._q.get_nowait()
            except queue.Empty:
                return
            if r.future.set_running_or_notify_cancel():  # not cancelled meanwhile
                r.future.set_exception(ShutdownError("the batcher shut down before this request ran",
                                                     fix="retry on a running server"))

    def close(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        """Stop accepting requests. drain=True runs what is queued; drain=False rejects it. Either way,
        every queued request gets an answer before close returns."""
        self._closed.set()
        if not drain:
            self._reject_pending()
        self._worker.join(timeout_s)
        self._reject_pending()  # anything left (worker stuck or drain timed out) is rejected, not lost

    def __enter__(self) -> "MicroBatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
