"""FrameStream: segment a stream of frames with decoding, preprocessing and inference overlapped.

    for r in seg.stream("drive.mp4"):            # or 0, "rtsp://...", a folder, an iterable of RGB arrays
        r.frame.image, r.prediction.labels, r.timings_ms

Four threads (read+decode, preprocess, infer+postprocess, finish: the batcher's answer and an optional
`render(frame, prediction)` such as an overlay) joined by bounded queues of `queue_size` items, so the next
frames decode and resize while the model runs and the caller encodes. Results come in frame
order. A slow consumer holds memory at the queues' size: for a file, every stage waits (no frame is ever
dropped); for a live source (camera, stream URL), the reader drops the oldest waiting frame instead, so
results stay fresh, and `stats.dropped` / `StreamResult.dropped_before` say how many went.

With a MicroBatcher, the infer stage hands frames to it instead of calling the backend, so several streams
(cameras) share one model and their frames are batched together.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from nfdseg.preprocess import prepare_batch

from .prediction import BatchModel, Prediction, PreparedQueue
from .video import Frame, FrameSource, open_source

log = logging.getLogger(__name__)
_END = object()
STAGES = ("decode_ms", "preprocess_ms", "infer_ms", "post_ms", "render_ms", "latency_ms")


@dataclass
class StreamResult:
    """One frame's result. timings_ms: decode, preprocess, infer (its batch's call), post, and latency (frame
    read to result ready, queues included); dropped_before: live frames dropped since the previous result."""

    frame: Frame
    prediction: Prediction
    timings_ms: dict[str, float]
    dropped_before: int = 0
    rendered: Any = None  # what `render(frame, prediction)` returned, computed in the stream's own thread


@dataclass
class _Item:
    frame: Frame
    read_at: float
    x: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


@dataclass
class StreamStats:
    """Counts and per-stage timings (ms) of a stream; `summary()` gives fps and p50/p99 per stage."""

    frames_read: int = 0
    frames_done: int = 0
    dropped: int = 0
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    stopped: str | None = None  # why a live source ended early
    timings_ms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in STAGES})

    def summary(self) -> dict[str, Any]:
        elapsed = (self.finished or time.perf_counter()) - self.started
        return {"frames": self.frames_done, "frames_read": self.frames_read, "dropped": self.dropped,
                "seconds": round(elapsed, 3), "fps": round(self.frames_done / elapsed, 2) if elapsed > 0 else 0.0,
                "stopped": self.stopped, "latency_ms": percentiles(self.timings_ms)}


def percentiles(timings_ms: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """{stage: {p50, p99, mean}} in ms for each stage that has samples."""
    return {k: {"p50": round(float(np.percentile(v, 50)), 2), "p99": round(float(np.percentile(v, 99)), 2),
                "mean": round(float(np.mean(v)), 2)} for k, v in timings_ms.items() if v}


class FrameStream:
    """Iterate to get StreamResults in frame order; see the module docstring.

    Args:
        segmenter: the model (a Segmenter). source: anything `open_source` accepts (live=None keeps the source's
            own kind).
        batcher: share the model with other streams through this MicroBatcher (any PreparedQueue).
        max_batch: frames per backend call when several are ready (never waits to fill a batch).
        queue_size: items per queue between stages (memory bound: about 4 x queue_size frames).
        render: called as render(frame, prediction) in the stream's finish thread; its value is StreamResult.rendered.
    """

    def __init__(self, segmenter: BatchModel, source: Any, batcher: PreparedQueue | None = None,
                 max_batch: int = 4, queue_size: int = 4, with_probs: bool = False, live: bool | None = None,
                 render: Callable[[Frame, Prediction], Any] | None = None):
        if max_batch < 1 or queue_size < 1:
            raise ValueError("max_batch and queue_size must be at least 1")
        self.seg, self.batcher, self.max_batch, self.with_probs = segmenter, batcher, max_batch, with_probs
        self.source: FrameSource = open_source(source, live)
        self.live = self.source.live
        self.stats = StreamStats()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._q_read: queue.Queue = queue.Queue(queue_size)
        self._q_pre: queue.Queue = queue.Queue(queue_size)
        self._q_inf: queue.Queue = queue.Queue(queue_size)
        self._q_out: queue.Queue = queue.Queue(queue_size)
        self.render = render
        self._threads = [threading.Thread(target=t, name=f"nfdseg-stream-{t.__name__.strip('_')}", daemon=True)
                         for t in (self._read, self._preprocess, self._infer, self._finish)]
        self._started = False

    # ------------------------------------------------------------------ stages
    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _put_live(self, item: _Item) -> None:
        """Never wait for a live source: when the queue is full, the oldest waiting frame makes room."""
        while True:
            try:
                self._q_read.put_nowait(item)
                return
            except queue.Full:
                try:
                    old = self._q_read.get_nowait()
                except queue.Empty:
                    continue
                if isinstance(old, _Item):
                    with self._lock:
                        self.stats.dropped += 1
                else:  # never drop a sentinel
                    self._q_read.put_nowait(old)

    def _read(self) -> None:
        try:
            self._read_frames()
        finally:  # closed by the thread that decodes: closing a container mid-decode from another thread crashes
            self.source.close()

    def _read_frames(self) -> None:
        try:
            for frame in self.source:
                if self._stop.is_set():
                    break
                item = _Item(frame, time.perf_counter(), timings={"decode_ms": frame.decode_ms})
                with self._lock:
                    self.stats.frames_read += 1
                if self.live:
                    self._put_live(item)
                elif not self._put(self._q_read, item):
                    break
            self.stats.stopped = self.source.stopped
            self._put(self._q_read, _END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, who raises it in order
            self._put(self._q_read, _Failure(e))

    def _preprocess(self) -> None:
        spec, in_graph = self.seg.manifest.preprocess, self.seg.normalize_in_graph
        while True:
            item = self._get(self._q_read)
            if item is None:
                return
            if isinstance(item, _Item):
                t = time.perf_counter()
                try:
                    item.x = prepare_batch([item.frame.image], spec, in_graph)[0]
                except BaseException as e:  # noqa: BLE001
                    item = _Failure(e)
                else:
                    item.timings["preprocess_ms"] = (time.perf_counter() - t) * 1e3
            if not self._put(self._q_pre, item) or not isinstance(item, _Item):
                return

    def _infer(self) -> None:
        while True:
            first = self._get(self._q_pre)
            if first is None:
                return
            batch, tail = [first] if isinstance(first, _Item) else [], None if isinstance(first, _Item) else first
            while tail is None and len(batch) < self.max_batch:
                try:
                    nxt = self._q_pre.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Item):
                    batch.append(nxt)
                else:
                    tail = nxt
            try:
                outs = self._run_batch(batch) if batch else []
            except BaseException as e:  # noqa: BLE001
                outs, tail = [], _Failure(e)
            for out in outs:
                if not self._put(self._q_inf, out):
                    return
            if tail is not None:
                self._put(self._q_inf, tail)
                return

    def _finish(self) -> None:
        """Wait for the batcher's answer (when shared), then `render` (an overlay, say) off the caller's thread."""
        while True:
            got = self._get(self._q_inf)
            if got is None:
                return
            if isinstance(got, tuple):
                item, pred = got
                try:
                    if self.batcher is not None:
                        pred = pred.result()  # queued with other streams' frames, then inferred and postprocessed
                        item.timings.update(infer_ms=(time.perf_counter() - item.timings.pop("submitted")) * 1e3,
                                            batch_size=pred.timings_ms.get("batch_size", 1))
                    rendered = None
                    if self.render is not None:
                        t = time.perf_counter()
                        rendered = self.render(item.frame, pred)
                        item.timings["render_ms"] = (time.perf_counter() - t) * 1e3
                    got = (item, pred, rendered)
                except BaseException as e:  # noqa: BLE001
                    got = _Failure(e)
            if not self._put(self._q_out, got) or not isinstance(got, tuple):
                return

    def _run_batch(self, batch: list[_Item]) -> list[tuple[_Item, Any]]:
        if self.batcher is not None:  # the result is a Future; the consumer waits for it, in order
            for it in batch:
                it.timings["submitted"] = time.perf_counter()
            return [(it, self.batcher.submit_prepared(it.x, it.frame.image.shape[:2], self.with_probs))
                    for it in batch]
        t = time.perf_counter()
        out = self.seg.backend_infer_batch(np.stack([it.x for it in batch]), labels_only=not self.with_probs)
        t_post = time.perf_counter()
        preds = self.seg.postprocess(out, [it.frame.image.shape[:2] for it in batch], self.with_probs)
        post_ms = (time.perf_counter() - t_post) * 1e3 / len(batch)
        for it in batch:
            it.timings.update(infer_ms=(t_post - t) * 1e3, post_ms=post_ms, batch_size=len(batch))
            it.x = None  # the input tensor is not needed any more: free it now
        return list(zip(batch, preds))

    def _get(self, q: queue.Queue) -> Any:
        while not self._stop.is_set():
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    # ------------------------------------------------------------------ consumer
    def __iter__(self) -> Iterator[StreamResult]:
        if self._started:
            raise RuntimeError("a FrameStream can be iterated once")
        self._started = True
        for t in self._threads:
            t.start()
        last_index = -1
        try:
            while True:
                got = self._get(self._q_out)
                if got is None or got is _END:
                    return
                if isinstance(got, _Failure):
                    raise got.error
                item, pred, rendered = got
                item.timings["latency_ms"] = (time.perf_counter() - item.read_at) * 1e3
                with self._lock:
                    self.stats.frames_done += 1
                    for k in STAGES:
                        if k in item.timings:
                            self.stats.timings_ms[k].append(item.timings[k])
                dropped = item.frame.index - last_index - 1 if self.live else 0
                last_index = item.frame.index
                pred.timings_ms = dict(item.timings)
                yield StreamResult(item.frame, pred, dict(item.timings), dropped, rendered)
        finally:
            self.close()

    def close(self) -> None:
        """Stop every stage and close the source (called when iteration ends, breaks or fails)."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join(5.0)
        if self.stats.finished is None:
            self.stats.finished = time.perf_counter()
        if not self._started:
            self.source.close()

    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
