"""The bench's time budget, on a fake clock and a fake slow backend: every count below follows from the
simulated seconds alone, so nothing here depends on how fast or busy the test machine is."""

import numpy as np
import pytest

from nfdseg.errors import ConfigError
from nfdseg.serve import bench
from nfdseg.serve.bench import BenchBudget, BenchTarget, bench_targets, timed_calls


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowSegmenter:
    """Costs `per_image_s` simulated seconds per image to infer, plus `overhead_s` per end-to-end call."""

    def __init__(self, clock: FakeClock, per_image_s: float, overhead_s: float = 0.0):
        self.clock, self.per_image_s, self.overhead_s = clock, per_image_s, overhead_s
        self.calls = {"infer": 0, "predict": 0}
        self.closed = False
        self.normalize_in_graph = False
        self.manifest = type("M", (), {"preprocess": None})()

    def describe(self):
        return {"backend": "fake", "device": "cpu", "precision": "fp32"}

    def backend_infer_batch(self, x):
        self.calls["infer"] += 1
        self.clock.now += self.per_image_s * len(x)

    def predict(self, imgs):
        self.calls["predict"] += 1
        self.clock.now += self.per_image_s * len(imgs) + self.overhead_s

    def close(self):
        self.closed = True


@pytest.fixture(autouse=True)
def no_real_images(monkeypatch):
    monkeypatch.setattr(bench, "sample_images", lambda seg, n, *a, **k: [np.zeros((2, 2, 3), np.uint8)] * n)
    monkeypatch.setattr(bench, "prepare_batch", lambda imgs, *a, **k: np.zeros((len(imgs), 3, 2, 2), np.float32))


def ticking(clock, seconds):
    def fn():
        clock.now += seconds
    return fn


def test_row_runs_for_its_duration_after_warmup():
    clock = FakeClock()
    calls = []
    fn = ticking(clock, 0.5)
    out = timed_calls(lambda: (calls.append(1), fn()), BenchBudget(duration_s=2.0, min_iters=3, warmup=2), clock)
    assert len(out) == 4, "2.0 s of 0.5 s calls after the warm-up"
    assert len(calls) == 6 and out == pytest.approx([500.0] * 4)


def test_minimum_count_wins_over_duration_and_deadline():
    clock = FakeClock()
    out = timed_calls(ticking(clock, 10.0), BenchBudget(duration_s=1.0, min_iters=3, warmup=0), clock, deadline=5.0)
    assert len(out) == 3 and clock.now == 30.0


def test_deadline_cuts_a_row_short_and_max_iters_caps_a_fast_one():
    clock = FakeClock()
    out = timed_calls(ticking(clock, 1.0), BenchBudget(duration_s=100.0, min_iters=2, warmup=0), clock, deadline=6.0)
    assert len(out) == 6
    clock = FakeClock()
    out = timed_calls(ticking(clock, 0.0), BenchBudget(duration_s=1.0, min_iters=1, warmup=0, max_iters=50), clock)
    assert len(out) == 50, "a call that takes no time still terminates"


def test_bench_fits_its_total_budget_and_says_what_it_skipped():
    clock = FakeClock()
    a, b = SlowSegmenter(clock, 1.0, 0.1), SlowSegmenter(clock, 1.0, 0.1)
    budget = BenchBudget(duration_s=1.0, min_iters=1, warmup=1, total_s=30.0)
    targets = [BenchTarget("a.onnx", "fake", lambda: a), BenchTarget("b.onnx", "fake", lambda: b)]
    rep = bench_targets(targets, (1, 4, 8), budget, progress=False, clock=clock)
    # batch 1: a 3.1 s (warm-up 1 + infer 1 + end-to-end 1.1), b 3.1 s; batch 4: a needs 1.1 * 4 * 3 = 13.2 s of 23.8
    # left -> runs (12.1 s); b needs 13.2 of 11.7 -> skipped; batch 8 needs 24.6 -> skipped
    ran = [(r["artifact"], r["batch"]) for r in rep["rows"] if "skipped" not in r]
    skipped = [(r["artifact"], r["batch"]) for r in rep["rows"] if "skipped" in r]
    assert ran == [("a.onnx", 1), ("a.onnx", 4), ("b.onnx", 1)]
    assert skipped == [("a.onnx", 8), ("b.onnx", 4), ("b.onnx", 8)] and rep["rows_skipped"] == 3
    assert rep["seconds"] == pytest.approx(18.3) and rep["seconds"] <= budget.total_s
    assert "30 s bench budget" in next(r for r in rep["rows"] if "skipped" in r)["skipped"]
    assert rep["budget"] == {"duration_s": 1.0, "min_iters": 1, "warmup": 1, "max_iters": 10_000, "total_s": 30.0}
    row = rep["rows"][0]
    assert row["infer"]["n"] == 1 and row["infer"]["p50_ms"] == pytest.approx(1000.0)
    assert row["end_to_end"]["p50_ms"] == pytest.approx(1100.0) and row["backend"] == "fake"
    assert a.closed and b.closed


def test_a_slower_target_than_expected_stops_after_its_warmup():
    clock = FakeClock()
    fast, slow = SlowSegmenter(clock, 1.0), SlowSegmenter(clock, 10.0)
    budget = BenchBudget(duration_s=1.0, min_iters=1, warmup=1, total_s=20.0)
    targets = [BenchTarget("fast.onnx", "fake", lambda: fast), BenchTarget("slow.onnx", "fake", lambda: slow)]
    rep = bench_targets(targets, (1,), budget, progress=False, clock=clock)
    # fast: 3 s. slow, estimated from fast (3 s of 17 left), warms up in 10 s: its 2 timed calls (20 s) cannot fit
    fast_row, slow_row = rep["rows"]
    assert fast_row["infer"]["n"] == 1 and "infer" not in slow_row
    assert "warm-up call took 10.0 s" in slow_row["skipped"] and slow_row["warmup_s_per_image"] == 10.0
    assert rep["seconds"] == pytest.approx(13.0) and slow.calls == {"infer": 1, "predict": 0}


def test_unbounded_bench_runs_every_row_and_unopenable_targets_are_reported():
    clock = FakeClock()
    seg = SlowSegmenter(clock, 0.25)

    def broken():
        raise RuntimeError("no GPU here")

    targets = [BenchTarget("x.engine", "tensorrt", broken), BenchTarget("a.onnx", "fake", lambda: seg)]
    rep = bench_targets(targets, (1, 2), BenchBudget(duration_s=1.0, min_iters=2, warmup=1), progress=False, clock=clock)
    assert rep["rows"][0] == {"backend": "tensorrt", "artifact": "x.engine", "error": "no GPU here"}
    assert [r["batch"] for r in rep["rows"][1:]] == [1, 2] and rep["rows_skipped"] == 0
    # batch 1: 4 timed 0.25 s calls fill 1 s; batch 2: 2 timed 0.5 s calls
    assert [r["infer"]["n"] for r in rep["rows"][1:]] == [4, 2]
    assert seg.calls == {"infer": 1 + 4 + 1 + 2, "predict": 4 + 2}, "end-to-end follows the warm infer loop"


def test_budget_rejects_nonsense():
    with pytest.raises(ConfigError):
        BenchBudget(min_iters=0)
    with pytest.raises(ConfigError):
        BenchBudget(total_s=0)


def test_percentiles_by_hand():
    """Linear interpolation between order statistics (numpy's default, as trtexec reports them): for 1..100 ms,
    the 99th percentile lies 0.01 of the way from 99 to 100. Shuffled input: the order must not matter."""
    ms = list(np.random.default_rng(0).permutation(np.arange(1, 101)).astype(float))
    p = bench.percentiles(ms)
    assert p == {"p50_ms": 50.5, "p95_ms": 95.05, "p99_ms": 99.01, "mean_ms": 50.5, "n": 100}
    assert bench.percentiles([7.0, 1.0, 4.0]) == {"p50_ms": 4.0, "p95_ms": 6.7, "p99_ms": 6.94, "mean_ms": 4.0, "n": 3}
