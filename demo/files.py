"""The demo's temporary files: one folder per visitor request, removed as soon as nobody needs it.

A visitor's previous results are removed when a new request replaces them, all of a visitor's files when the
page is closed (Gradio's unload event) or left idle for `max_age_s`, and everything when the demo closes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class ResultFiles:
    """Per-visitor request folders under one temporary root (thread-safe; Gradio serves requests concurrently)."""

    def __init__(self, max_age_s: float = 3600.0, prefix: str = "nfdseg-demo-"):
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.max_age_s = max_age_s
        self._dirs: dict[str, tuple[Path, float]] = {}
        self._lock = threading.Lock()

    def for_request(self, visitor: str) -> Path:
        """A fresh folder for this visitor's new results; their previous folder, and any folder idle for longer
        than max_age_s, is removed."""
        now = time.monotonic()
        with self._lock:
            stale = [v for v, (_, t) in self._dirs.items() if v == visitor or now - t > self.max_age_s]
            old = [self._dirs.pop(v)[0] for v in stale]
            folder = Path(tempfile.mkdtemp(dir=self.root))
            self._dirs[visitor] = (folder, now)
        for d in old:
            shutil.rmtree(d, ignore_errors=True)
        return folder

    def release(self, visitor: str) -> None:
        """The visitor left: remove their files."""
        with self._lock:
            entry = self._dirs.pop(visitor, None)
        if entry:
            shutil.rmtree(entry[0], ignore_errors=True)
            log.debug("removed the results of visitor %s", visitor)

    def folders(self) -> list[Path]:
        with self._lock:
            return [d for d, _ in self._dirs.values()]

    def close(self) -> None:
        """Remove every file the demo wrote."""
        with self._lock:
            self._dirs.clear()
        shutil.rmtree(self.root, ignore_errors=True)
