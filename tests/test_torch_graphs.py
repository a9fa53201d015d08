"""The torch backend's CUDA graphs under concurrent callers: no thread touches the device while another
captures (issue 20: other threads' host-to-device copies ran outside the lock, and PyTorch's default capture
mode errors on work in other threads).

The ordering is checked on the CPU with a stand-in graph (the copy in must happen while the lock is held);
the real thing runs on a GPU only: threads start before the first capture of each shape and must get the
eager results (skipped here with the reason).
"""

from __future__ import annotations

import contextlib
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from nfdseg.serve.backends.torch_backend import TorchBackend


def tiny_net(classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, classes, 1))


def _backend(device: str, graphs: bool, precision: str = "fp32") -> TorchBackend:
    return TorchBackend(Path("stand-in/best.pt"), types.SimpleNamespace(precision=precision), device=device,
                        precision=precision, cuda_graphs=graphs, model=tiny_net())


def test_with_graphs_the_copy_in_runs_under_the_capture_lock():
    b = _backend("cpu", graphs=False)
    b.cuda_graphs = True  # the graph path, with a stand-in graph (no GPU here)
    held: list[bool] = []
    to_device = b._to_device

    def spying_to_device(batch):
        held.append(b._lock.locked())
        return to_device(batch)

    def fake_graph_for(x):
        static_in = x.clone()
        out = [None, None]

        def replay():
            out[0], out[1] = b._forward(static_in)
        return types.SimpleNamespace(replay=replay), static_in, out

    b._to_device, b._graph_for = spying_to_device, fake_graph_for
    batch = np.random.default_rng(0).standard_normal((2, 3, 16, 24)).astype(np.float32)
    labels = b.infer_labels(batch)
    assert labels.shape == (2, 16, 24) and held == [True], "the host-to-device copy ran outside the lock"


class _TwoDeviceCuda:
    """Stands in for torch.cuda on a machine with two GPUs, as far as capture needs: streams know their
    device, `graph()` without `stream=` uses one process-wide stream made on the device current at its first use
    (PyTorch's `default_capture_stream`), and a capture while another is open fails as PyTorch's does."""

    def __init__(self):
        self.current, self.default_stream, self.open, self.captures = 0, None, 0, []

    class Stream:
        def __init__(self, device=None):
            self.device = device.index if isinstance(device, torch.device) else device

        def wait_stream(self, other):
            pass

    def current_stream(self, device=None):
        return self.Stream(self.current if device is None else device)

    @contextlib.contextmanager
    def device(self, dev):
        before, self.current = self.current, dev.index
        try:
            yield
        finally:
            self.current = before

    @contextlib.contextmanager
    def stream(self, s):
        with self.device(torch.device("cuda", s.device)):
            yield

    def CUDAGraph(self):  # noqa: N802 - torch's name
        return types.SimpleNamespace(replay=lambda: None)

    @contextlib.contextmanager
    def graph(self, g, pool=None, stream=None, capture_error_mode="global"):
        if stream is None:
            self.default_stream = self.default_stream or self.Stream(self.current)
            stream = self.default_stream
        if self.open:
            raise RuntimeError("Cannot capture: another capture is under way in this process")
        self.open += 1
        try:
            time.sleep(0.05)  # a capture takes a while: another thread's would overlap
            yield
        finally:
            self.open -= 1
        self.captures.append({"stream_device": stream.device, "current_device": self.current})


def _on_fake_device(index: int, cuda: _TwoDeviceCuda) -> TorchBackend:
    b = _backend("cpu", graphs=False)
    b.dev, b.cuda_graphs = torch.device("cuda", index), True
    b.torch = types.SimpleNamespace(**{k: getattr(torch, k) for k in ("uint8", "float32", "inference_mode")},
                                    cuda=cuda)
    return b


def test_capture_on_a_second_device_uses_that_devices_stream_one_capture_at_a_time(monkeypatch):
    import nfdseg.serve.backends.torch_backend as tb

    cuda = _TwoDeviceCuda()
    monkeypatch.setattr(tb, "_STREAMS", {}, raising=False)
    first, second = _on_fake_device(0, cuda), _on_fake_device(1, cuda)
    x = torch.zeros(1, 3, 8, 8)
    first._graph_for(x)  # cuda:0 current, as in a process that touched cuda:0 first
    second._graph_for(x)
    assert [c["stream_device"] for c in cuda.captures] == [0, 1], "cuda:1's graph was captured on cuda:0's stream"
    assert cuda.captures[1]["current_device"] == 1 and cuda.current == 0
    errors = []

    def capture(b, shape):
        try:
            b._graph_for(torch.zeros(shape))
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=capture, args=(b, (2, 3, 8, 8 + i))) for i, b in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors  # two backends' captures must not overlap (separate locks used to allow it)
    assert len(cuda.captures) == 4 and len(tb._STREAMS) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none here")
def test_threads_started_before_the_first_capture_get_the_eager_results():
    graphs, eager = _backend("cuda", graphs=True, precision="fp16"), _backend("cuda", graphs=False, precision="fp16")
    rng = np.random.default_rng(1)
    shapes = [(1, 3, 64, 96), (2, 3, 96, 64)]
    batches = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    want = [eager.infer_labels(x) for x in batches]
    assert not graphs._graphs, "no shape may be captured before the threads start"
    start, errors, results = threading.Barrier(8), [], []

    def worker(i):
        try:
            start.wait()
            for k in range(6):
                j = (i + k) % 2
                results.append((j, graphs.infer_labels(batches[j])))
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(graphs._graphs) == 2 and len(results) == 48
    for j, got in results:
        assert (got == want[j]).mean() >= 0.999


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs; torch sees fewer here")
def test_graphs_on_the_second_gpu_replay_each_new_input():
    torch.cuda.set_device(0)  # cuda:0 current, the model on cuda:1: the case that captured an empty graph
    graphs = _backend("cuda:1", graphs=True, precision="fp16")
    eager = _backend("cuda:1", graphs=False, precision="fp16")
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.standard_normal((1, 3, 64, 96)).astype(np.float32)
        assert (graphs.infer_labels(x) == eager.infer_labels(x)).mean() >= 0.999
