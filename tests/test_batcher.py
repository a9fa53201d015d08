"""MicroBatcher: many threads get exactly their own results; busy, timeout and shutdown as documented."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nfdseg.errors import BusyError, InputError
from nfdseg.preprocess import prepare_batch
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
    failures = [2]  # the batch and its one retry fail; the request is not run a third time

    def flaky(x):
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("device lost")
        return real(x)

    seg.backend.infer = flaky
    with MicroBatcher(seg, max_batch=1) as mb:
        with pytest.raises(RuntimeError, match="device lost"):
            mb.predict(_images(1)[0])
        assert mb.predict(_images(1)[0]).labels.shape == (48, 48)
        assert mb.describe()["retried"] == 1 and mb.describe()["errors"] == 1


def test_a_poisoned_input_fails_alone_and_its_batch_mates_are_retried_once(exported):
    seg = Segmenter(exported, backend="onnxruntime")
    real = seg.backend.infer
    calls = []
    poison = 7  # a stand-in backend that raises on any batch holding this one input

    def picky(x):
        calls.append(len(x))
        if np.any(np.all(x.reshape(len(x), -1) == poison, axis=1)):
            raise RuntimeError("bad tensor")
        return real(x)

    good, want = _distinct_images(seg, 3)
    seg.backend.infer = picky
    xs = [prepare_batch([im], seg.manifest.preprocess, seg.normalize_in_graph)[0] for im in good]
    bad = np.full_like(xs[0], poison)
    with MicroBatcher(seg, max_batch=4, max_wait_ms=10_000) as mb:  # the four requests form one batch
        futs = [mb.submit_prepared(x, im.shape[:2]) for x, im in zip(xs[:2], good)]
        futs.append(mb.submit_prepared(bad, (48, 48)))
        futs.append(mb.submit_prepared(xs[2], good[2].shape[:2]))
        with pytest.raises(RuntimeError, match="bad tensor"):
            futs[2].result(timeout=30)
        got = [f.result(timeout=30).labels for f in futs[:2] + futs[3:]]
        d, calls = mb.describe(), list(calls)
    for labels, w in zip(got, want):
        assert np.array_equal(labels, w)
    assert calls[0] == 4 and calls[1:5] == [1, 1, 1, 1], calls  # one batch, then each request once, alone
    assert d["retried"] == 4 and d["errors"] == 1


class GatedBackend:
    """Wraps a backend: each call waits at a gate the test opens, so a batch can be held inside the backend."""

    def __init__(self, inner):
        self.inner, self.calls, self.gate = inner, [], threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def infer(self, x):
        self.calls.append(len(x))
        assert self.gate.wait(10), "the test never opened the gate"
        return self.inner.infer(x)


class RecordingBatcher(MicroBatcher):
    """Keeps every Future it hands out and notes when someone (asyncio, for a caller that gave up) tries to
    cancel one: `fut.cancel_tried` is set once cancel() has been called, whatever it returned."""

    def __init__(self, *a, **k):
        self.futures = []
        super().__init__(*a, **k)

    def submit(self, *a, **k):
        fut = super().submit(*a, **k)
        fut.cancel_tried, cancel = threading.Event(), fut.cancel

        def noted_cancel():
            try:
                return cancel()
            finally:
                fut.cancel_tried.set()

        fut.cancel = noted_cancel
        self.futures.append(fut)
        return fut


def _distinct_images(seg, n):
    """n images of mixed sizes whose label maps all differ, so a result handed to the wrong caller shows."""
    imgs = _images(n)
    labels = [seg.predict(im).labels for im in imgs]
    for i in range(n):
        for j in range(i):
            assert labels[i].shape != labels[j].shape or not np.array_equal(labels[i], labels[j])
    return imgs, labels


def test_cancelled_request_is_skipped_and_the_worker_keeps_serving(exported):
    seg = Segmenter(exported, backend="onnxruntime")
    imgs, want = _distinct_images(seg, 4)
    seg.backend = GatedBackend(seg.backend)
    with MicroBatcher(seg, max_batch=4, max_wait_ms=0) as mb:
        a = mb.submit(imgs[0])
        wait_until_busy(seg.backend)  # a is inside the backend; b and c wait in the queue
        b, c = mb.submit(imgs[1]), mb.submit(imgs[2])
        assert b.cancel()
        seg.backend.gate.set()
        assert np.array_equal(a.result(timeout=5).labels, want[0])
        assert np.array_equal(c.result(timeout=5).labels, want[2])
        assert b.cancelled() and seg.backend.calls == [1, 1], "the cancelled request never reached the backend"
        assert np.array_equal(mb.predict(imgs[3]).labels, want[3])
        assert mb.stats["images"] == 3 and mb.stats["errors"] == 0


def test_caller_cancelled_while_its_batch_runs_does_not_fail_its_batch_mates(exported):
    """An asyncio caller gives up (wait_for times out) while its request is inside the backend with two others:
    the others get their own results, nothing is counted as an error, and the worker serves the next request."""
    seg = Segmenter(exported, backend="onnxruntime")
    imgs, want = _distinct_images(seg, 4)
    seg.backend = GatedBackend(seg.backend)
    with RecordingBatcher(seg, max_batch=3, max_wait_ms=5000) as mb:  # the batch starts when 3 requests are in
        async def impatient():
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(mb.apredict(imgs[1]), timeout=0.2)

        a = mb.submit(imgs[0])
        with ThreadPoolExecutor(1) as pool:
            gave_up = pool.submit(asyncio.run, impatient())
            end = time.perf_counter() + 10
            while len(mb.futures) < 2:
                assert time.perf_counter() < end
                time.sleep(0.002)
            c = mb.submit(imgs[2])
            wait_until_busy(seg.backend)  # a, b, c are in one backend call
            gave_up.result(timeout=10)
        b = mb.futures[1]
        assert b.cancel_tried.wait(10), "asyncio passes the caller's cancellation on to the batcher's Future"
        seg.backend.gate.set()
        assert seg.backend.calls == [3]
        assert np.array_equal(a.result(timeout=5).labels, want[0])
        assert np.array_equal(c.result(timeout=5).labels, want[2])
        assert b.cancelled() or np.array_equal(b.result(timeout=5).labels, want[1]), "nobody gets another's result"
        assert mb.stats["errors"] == 0
        assert np.array_equal(mb.predict(imgs[3]).labels, want[3])


def test_timed_out_caller_gets_no_result_and_the_next_caller_gets_its_own(exported):
    seg = Segmenter(exported, backend="onnxruntime")
    imgs, want = _distinct_images(seg, 3)
    seg.backend = GatedBackend(seg.backend)
    with MicroBatcher(seg, max_batch=1, max_wait_ms=0) as mb:
        a = mb.submit(imgs[0])
        wait_until_busy(seg.backend)
        with pytest.raises(RequestTimeout):
            mb.predict(imgs[1], timeout_s=0.05)
        seg.backend.gate.set()
        assert np.array_equal(a.result(timeout=5).labels, want[0])
        assert np.array_equal(mb.predict(imgs[2]).labels, want[2])
        assert seg.backend.calls == [1, 1], "the timed-out request was not run for nobody"
        assert mb.stats["images"] == 2 and mb.stats["errors"] == 0


def test_with_probs_through_the_batcher(exported):
    """Requests with and without probabilities in one batch (mixed sizes); each gets what it asked for, at its
    own size, equal to a direct Segmenter call."""
    seg = Segmenter(exported, backend="onnxruntime")
    imgs = _images(9)
    direct = [seg.predict(im, with_probs=True) for im in imgs]
    seg.backend = GatedBackend(seg.backend)
    with MicroBatcher(seg, max_batch=8, max_wait_ms=0) as mb:
        first = mb.submit(imgs[8])
        wait_until_busy(seg.backend)  # the worker is held; the next 8 requests queue up and form one batch
        futures = [mb.submit(im, with_probs=i % 2 == 0) for i, im in enumerate(imgs[:8])]
        seg.backend.gate.set()
        got = [f.result(timeout=10) for f in futures]
        assert first.result(timeout=10).probs is None and seg.backend.calls == [1, 8]
    for i, (im, p, want) in enumerate(zip(imgs, got, direct)):
        assert p.timings_ms["batch_size"] == 8
        assert np.array_equal(p.labels, want.labels), i
        if i % 2:
            assert p.probs is None
        else:
            assert p.probs.shape == (8, *im.shape[:2]) and p.probs.dtype == np.float32
            np.testing.assert_allclose(p.probs, want.probs, atol=1e-5)
            np.testing.assert_allclose(p.probs.sum(0), 1.0, atol=1e-4)
