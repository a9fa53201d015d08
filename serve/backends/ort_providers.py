"""What onnxruntime says while it sets up a GPU session, kept instead of lost.

Two things go wrong quietly on a GPU server without torch. (1) CUDA and cuDNN from NVIDIA's pip wheels
(`onnxruntime-gpu[cuda,cudnn]`, what `nfdseg[gpu-cu12]` / `[gpu-cu13]` install) are not on the library path
unless something loads them: torch does when imported first, otherwise `onnxruntime.preload_dlls()` must
(onnxruntime 1.21+). (2) When the CUDA provider cannot load, onnxruntime writes why (a missing
`libcudnn.so.9`, a CUDA major the driver lacks) from C++ to stderr, or prints "EP Error ... Falling back"
to stdout, and runs on the CPU. `captured_output` catches both so the backend can put that text in its
FALLBACK warning and `describe()`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_CAPTURE_LOCK = threading.Lock()  # file descriptors 1 and 2 belong to the process: one capture at a time
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TELLING = re.compile(r"\[[EW]:onnxruntime|EP Error|fail|error|cannot|not found|no such|\.so\b|require|cuda|cudnn",
                      re.IGNORECASE)


class Captured:
    text: str = ""


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Everything written to stdout/stderr inside the block, at the file-descriptor level (onnxruntime's C++
    logger) and at Python's level (its `print`s), in `.text` after the block. Output of other threads in that
    window is captured too; the caller logs the text, so nothing is lost."""
    out = Captured()
    with _CAPTURE_LOCK:
        py_out, py_err = io.StringIO(), io.StringIO()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = (os.dup(1), os.dup(2))
        except (OSError, ValueError, AttributeError):  # no real descriptors (an embedded interpreter)
            saved = None
        sink = tempfile.TemporaryFile(mode="w+b")
        try:
            if saved:
                os.dup2(sink.fileno(), 1)
                os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_err):
                yield out
        finally:
            if saved:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
            sink.seek(0)
            native = sink.read().decode("utf-8", errors="replace")
            sink.close()
            out.text = _ANSI.sub("", native + py_out.getvalue() + py_err.getvalue())


def preload_gpu_libraries(ort) -> str:
    """`ort.preload_dlls()` where this onnxruntime has it; returns what it reported ('' when it said nothing).
    Called only when a CUDA/TensorRT provider is about to be requested."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return (f"onnxruntime {getattr(ort, '__version__', '?')} has no preload_dlls (added in 1.21): CUDA and "
                "cuDNN must be on the library path")
    with captured_output() as cap:
        try:
            preload()
        except Exception as e:  # noqa: BLE001 - a failed preload is reported, and the session still tries
            print(f"onnxruntime.preload_dlls() failed: {type(e).__name__}: {e}")
    return cap.text.strip()


def telling_lines(text: str, limit: int = 800) -> str:
    """The lines of onnxruntime's output that say what failed, joined with ' | ' and cut to `limit` chars."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and _TELLING.search(ln) and "****" not in ln]
    seen: list[str] = []
    for ln in lines:
        if ln not in seen:
            seen.append(ln)
    joined = " | ".join(seen)
    return joined if len(joined) <= limit else joined[:limit - 3] + "..."


def relog(text: str, level: int = logging.INFO) -> None:
    """Hand captured onnxruntime output to logging, one record per line."""
    for ln in text.splitlines():
        if ln.strip():
            log.log(level, "onnxruntime: %s", ln.strip())
