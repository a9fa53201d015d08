"""MicroBatcher: many threads get exactly their own results; busy, timeout and shutdown as documented."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nfdseg.errors import BusyError, InputError
from nfdseg.serve import MicroBatcher, RequestTimeout, Segmenter, ShutdownError


@pytest.fixture(scope="module")
def seg(exported):
    return Segmenter(exported, backend="onnxruntime", device="cpu")


def _images(n):
    rng = np.random.default_rng(42)
    sizes = [(48, 48), (30, 70), (64, 40), (17, 23)]  # mixed sizes in one batch
    return [rng.integers(0, 255, (*sizes[i % 4], 3), dtype=np.uint8) for i in range(n)]


class SlowBackend:
    """Wraps a backend: each call sleeps, so the queue fills and deadlines pass deterministically."""

    def __init__(self, inner, delay):
        self.inner, self.delay, self.calls = inner, delay, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def infer(self, x):
        self.calls.append(len(x))
        time.sleep(self.delay)
        return self.inner.infer(x)


def wait_until_busy(backend, calls=1, timeout=10.0):
    """Block until the worker has entered the backend `calls` times (no fixed sleeps: robust under load)."""
    end = time.perf_counter() + timeout
    while len(backend.calls) < calls:
        assert time.perf_counter() < end, "the worker never picked up the request"
        time.sleep(0.002)


def test_many_threads_get_their_own_results(seg):
    imgs = _images(320)
    expected = [seg.predict(im).labels for im in imgs]
    with MicroBatcher(seg, max_batch=8, max_wait_ms=2) as mb:
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda im: mb.predict(im).labels, imgs))
        stats = dict(mb.stats)
    assert len(got) == len(imgs)
    for i, (a, b) in enumerate(zip(expected, got)):
        assert a.shape == b.shape and np.array_equal(a, b), f"request {i} got another result"
    assert stats["requests"] == stats["images"] == 320 and stats["errors"] == 0
    assert stats["batches"] < 320, "requests were batched"


def test_async_callers(seg):
    imgs = _images(24)
    expected = [seg.predict(im).labels for im in imgs]

    async def run(mb):
        return await asyncio.gather(*(mb.apredict(im) for im in imgs))

    with MicroBatcher(seg, max_batch=8, max_wait_ms=5) as mb:
        got = asyncio.run(run(mb))
    assert all(np.array_equal(a, g.labels) for a, g in zip(expected, got))


def test_full_queue_is_busy_error(exported):
    seg = Segmenter(exported, backend="onnxruntime")
    seg.backend = SlowBackend(seg.backend, 1.0)
    im = _images(1)[0]
    with MicroBatcher(seg, max_batch=1, max_wait_ms=0, max_queue=2) as mb:
        futures = [mb.submit(im)]
        wait_until_busy(seg.backend)  # the worker holds the first for 1 s; two more fill the queue
        futures += [mb.submit(im), mb.submit(im)]
        with pytest.raises(BusyError, match="queue is full"):
            mb.submit(im)
        assert mb.stats["busy"] == 1
        assert all(f.result(timeout=5).labels.shape == (48, 48) for f in futures)


def test_deadline_passes_in_queue(exported):
    seg = Segmenter(exported, backend="onnxruntime")
    seg.backend = SlowBackend(seg.backend, 0.6)
    im = _images(1)[0]
    with MicroBatcher(seg, max_batch=1, max_wait_ms=0) as mb:
        first = mb.submit(im)
        wait_until_busy(seg.backend)
        late = mb.submit(im, timeout_s=0.1)
        assert first.result(timeout=5) is not None
        with pytest.raises(RequestTimeout, match="deadline"):
            late.result(timeout=5)
        assert mb.stats["timeouts"] == 1


def test_shutdown_answers_every_request(exported):
    seg = Segmenter(exported, backend="onnxruntime")
    seg.backend = SlowBackend(seg.backend, 0.2)
    im = _images(1)[0]
    mb = MicroBatcher(seg, max_batch=1, max_wait_ms=0)
    futures = [mb.submit(im) for _ in range(5)]
    wait_until_busy(seg.backend)
    mb.close(drain=False)
    outcomes = [("ok" if f.exception(timeout=5) is None else type(f.exception()).__name__) for f in futures]
    assert len(outcomes) == 5 and "ShutdownError" in outcomes and outcomes[0] == "ok"
    with pytest.raises(ShutdownError):
        mb.submit(im)
    mb2 = MicroBatcher(seg, max_batch=2, max_wait_ms=0)
    futures = [mb2.submit(im) for _ in range(4)]
    mb2.close(drain=True)
    assert all(f.result(timeout=0).labels.shape == (48, 48) for f in futures)


def test_bad_input_fails_only_its_caller(seg):
    with MicroBatcher(seg) as mb:
        with pytest.raises(InputError):
            mb.predict(b"garbage")
        assert mb.predict(_images(1)[0]).labels.shape == (48, 48)


def test_backend_failure_reaches_callers_and_worker_survives(exported):
    seg = Segmenter(exported, backend="onnxruntime")
    real = seg.backend.infer
    fail = threading.Event()
    fail.set()

    def flaky(x):
        if fail.is_set():
            fail.clear()
            raise RuntimeError("device lost")
        return real(x)

    seg.backend.infer = flaky
    with MicroBatcher(seg, max_batch=1) as mb:
        with pytest.raises(RuntimeError, match="device lost"):
            mb.predict(_images(1)[0])
        assert mb.predict(_images(1)[0]).labels.shape == (48, 48)
