"""The demo's temporary files: one folder per visitor request, removed as soon as nobody needs it.

Gradio copies a result file into its own cache when it answers, so a folder is needed only while its request is
answered. A visitor's older results are removed when a new request replaces them (the one just before is kept
until the next, in case two of the visitor's requests overlap), all of a visitor's files when the page is closed
(Gradio's unload event) or left idle for `max_age_s`, and everything when the demo closes.
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

    def __init__(self, max_age_s: float = 3600.0, prefix: str = "nfdseg-demo-", keep: int = 2):
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.max_age_s, self.keep = max_age_s, keep
        self._dirs: dict[str, list[tuple[Path, float]]] = {}  # visitor -> [(folder, created)], oldest first
        self._lock = threading.Lock()

    def for_request(self, visitor: str) -> Path:
        """A fresh folder for this visitor's new results. Their folders beyond the `keep` newest, and every
        visitor's folders idle for longer than max_age_s, are removed."""
        now = time.monotonic()
        old: list[Path] = []
        with self._lock:
            for v in list(self._dirs):
                entries = self._dirs[v]
                if now - entries[-1][1] > self.max_age_s:
                    old += [d for d, _ in self._dirs.pop(v)]
            folder = Path(tempfile.mkdtemp(dir=self.root))
            entries = self._dirs.setdefault(visitor, [])
            entries.append((folder, now))
            while len(entries) > self.keep:
                old.append(entries.pop(0)[0])
        for d in old:
            shutil.rmtree(d, ignore_errors=True)
        return folder

    def release(self, visitor: str) -> None:
        """The visitor left: remove their files."""
        with self._lock:
            entries = self._dirs.pop(visitor, [])
        for d, _ in entries:
            shutil.rmtree(d, ignore_errors=True)
        if entries:
            log.debug("removed the results of visitor %s", visitor)

    def folders(self, visitor: str | None = None) -> list[Path]:
        """The folders kept now (of one visitor, or of all), oldest first."""
        with self._lock:
            groups = [self._dirs.get(visitor, [])] if visitor is not None else list(self._dirs.values())
            return [d for entries in groups for d, _ in entries]

    def close(self) -> None:
        """Remove every file the demo wrote."""
        with self._lock:
            self._dirs.clear()
        shutil.rmtree(self.root, ignore_errors=True)
