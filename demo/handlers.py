"""What the demo's events do, as plain classes over the runtime (no Gradio import here): segment uploaded images,
re-blend them, segment one webcam frame, segment an uploaded video. app.py wires them to the page."""

from __future__ import annotations

import html
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nfdseg.errors import NfdsegError
from nfdseg.preprocess import load_image, overlay

from .files import ResultFiles
from .render import class_shares, legend_html, side_by_side, status_markdown


def message(name: str, e: Exception) -> str:
    """One line for the page, naming the uploaded file by its own name."""
    what = getattr(e, "what", None) or str(e)
    fix = getattr(e, "fix", None)
    text = what if what.startswith(f"{name}:") else f"{name}: {what}"
    return text + (f" ({fix})" if fix else "")


def visitor(request) -> str:
    """The visitor's session (one browser tab, or one API client); a request without one is its own visitor,
    cleaned up by age, so that it never removes another caller's results."""
    return getattr(request, "session_hash", None) or f"request-{uuid.uuid4().hex}"


@dataclass
class DemoResources:
    """What a built demo owns: the shared batcher, the visitors' result files, the examples shown."""

    segmenter: Any
    batcher: Any
    files: ResultFiles
    examples: list[str] = field(default_factory=list)
    examples_from: str = "given"

    @property
    def info(self) -> dict[str, Any]:
        return self.segmenter.describe()

    def close(self) -> None:
        """The batcher, then every temporary file the demo wrote."""
        self.batcher.close()
        self.files.close()


class ImageHandlers:
    """The image tab: segment an image and/or several files through the batcher; re-blend at a new opacity."""

    def __init__(self, res: DemoResources, max_files: int = 16):
        self.res, self.max_files = res, max_files
        self.names, self.palette = res.segmenter.class_names, res.segmenter.palette

    def _inputs(self, image, files) -> tuple[list[tuple[str, Any]], list[str]]:
        inputs: list[tuple[str, Any]] = []
        if image is not None:
            inputs.append((Path(image).name if isinstance(image, str) else "image", image))
        for f in (files or [])[:self.max_files]:
            path = f if isinstance(f, str) else getattr(f, "name", str(f))
            inputs.append((Path(path).name, path))
        errors = []
        if files and len(files) > self.max_files:
            errors.append(f"only the first {self.max_files} of {len(files)} files were segmented")
        return inputs, errors

    def _run(self, inputs, errors):
        pending: list[tuple[str, np.ndarray, Future]] = []
        for name, src in inputs:
            try:
                rgb = load_image(src, limits=self.res.segmenter.limits, name=name)
                pending.append((name, rgb, self.res.batcher.submit(rgb)))
            except NfdsegError as e:  # bad upload or busy queue: tell the user, serve the rest
                errors.append(message(name, e))
        results, lat, batch_sizes = [], [], []
        for name, rgb, fut in pending:
            t0 = time.perf_counter()
            try:
                pred = fut.result(timeout=60)
            except Exception as e:  # timeouts, shutdown, backend failure
                errors.append(message(name, e))
                continue
            lat.append(pred.timings_ms.get("queue_ms", 0.0) + (time.perf_counter() - t0) * 1e3)
            batch_sizes.append(int(pred.timings_ms.get("batch_size", 1)))
            results.append((name, rgb, pred.labels))
        return results, lat, batch_sizes

    def segment(self, image: str | None, files: list | None, alpha: float, request):
        """Returns gallery items, legend html, status markdown, label-map files, and state for re-blending."""
        from PIL import Image

        inputs, errors = self._inputs(image, files)
        results, lat, batch_sizes = self._run(inputs, errors)
        gallery, files_out = [], []
        shares = np.zeros(len(self.names))
        req_dir = self.res.files.for_request(visitor(request))  # and this visitor's older results are removed
        for i, (name, rgb, labels) in enumerate(results):
            gallery.append((side_by_side(rgb, labels, self.palette, alpha), name))
            shares += class_shares(labels, len(self.names))
            label_path = req_dir / f"{Path(name).stem}_{i}_labels.png"
            Image.fromarray(labels).save(label_path)
            files_out.append(str(label_path))
        legend = legend_html(self.names, self.palette, shares / len(results) if results else None)
        status = status_markdown(self.res.info, len(results), lat, batch_sizes or [1], errors)
        return gallery, legend, status, files_out or None, list(results)

    def reblend(self, state, alpha):
        return [(side_by_side(rgb, labels, self.palette, alpha), name) for name, rgb, labels in (state or [])]

    def visitor_left(self, request) -> None:
        self.res.files.release(visitor(request))


class StreamHandlers:
    """The webcam tab (one frame per streamed event, through the shared batcher, so several viewers are batched)
    and the video tab (an uploaded clip through the pipelined stream into an overlay MP4)."""

    def __init__(self, res: DemoResources, max_video_frames: int = 900):
        self.res, self.max_video_frames = res, max_video_frames
        self.palette = res.segmenter.palette

    def webcam_frame(self, frame: np.ndarray | None, alpha: float):
        """One webcam frame (RGB array) -> (overlay, status line with this frame's latency in ms)."""
        if frame is None:
            return None, "Start the webcam to segment it live."
        t = time.perf_counter()
        try:
            rgb = load_image(frame, limits=self.res.segmenter.limits, name="webcam frame")
            pred = self.res.batcher.predict(rgb, timeout_s=10.0)
        except NfdsegError as e:  # a busy queue skips this frame; the next one comes anyway
            return None, f"<span class='nfd-error'>⚠ {html.escape(message('webcam', e))}</span>"
        ms = (time.perf_counter() - t) * 1e3
        return (overlay(rgb, pred.labels, self.palette, alpha),
                f"**webcam** {rgb.shape[1]}×{rgb.shape[0]}: {ms:.1f} ms per frame "
                f"(queue {pred.timings_ms.get('queue_ms', 0.0):.1f} ms, batched with up to "
                f"{int(pred.timings_ms.get('batch_size', 1))})")

    def video(self, path: str | None, alpha: float, request):
        """An uploaded video -> (overlay MP4 path or None, status markdown with fps and p50/p99 ms per stage)."""
        from nfdseg.serve.predict_video import VideoJob, segment_video

        if not path:
            return None, "Upload a video (MP4, WebM, MKV, AVI, MOV)."
        name = Path(path).name
        out = self.res.files.for_request(visitor(request))
        try:
            s = segment_video(self.res.segmenter, path, VideoJob(out, alpha=alpha, max_frames=self.max_video_frames),
                              stem=Path(name).stem)
        except NfdsegError as e:  # named by the visitor's file name, never the server's upload path
            text = message(name, e).replace(f"{path}: ", "").replace(str(path), name)
            return None, f"<span class='nfd-error'>⚠ {html.escape(text)}</span>"
        lat = s["latency_ms"]
        stages = ", ".join(f"{k[:-3]} {lat[k]['p50']:.1f}/{lat[k]['p99']:.1f}"
                           for k in ("decode_ms", "infer_ms", "render_ms", "encode_ms") if k in lat)
        capped = f" (the first {self.max_video_frames})" if s["frames"] >= self.max_video_frames else ""
        return s["video"], (f"**{html.escape(name)}: {s['frames']} frames{capped} segmented** at {s['fps']:.1f} fps · "
                            f"per-frame ms p50/p99: {stages}")
