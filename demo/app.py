"""The Gradio app. Every request goes through one shared MicroBatcher, so simultaneous users are
batched; a bad upload or a full queue produces a message in the page that names the uploaded file (never a
server path), never a stack trace. Uploads are decoded by nfdseg.preprocess.load_image, so EXIF orientation is
applied as everywhere else; each visitor's result files are removed when they are no longer needed (files.py)."""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from nfdseg.errors import MissingDependencyError, NfdsegError
from nfdseg.preprocess import load_image

from .examples import example_images
from .files import ResultFiles
from .render import LEGEND_CSS, class_shares, legend_html, model_origin, side_by_side, status_markdown

log = logging.getLogger(__name__)


def _gradio():
    try:
        import gradio as gr
    except ImportError:
        raise MissingDependencyError("the demo needs Gradio", fix="pip install 'nfdseg[demo]'") from None
    return gr


def _path_image(gr, **kwargs):
    """A gr.Image whose handler receives the uploaded file's path unopened. gr.Image opens uploads with PIL before
    the handler runs, so a broken file failed there with Gradio's generic error (and the server path in its log
    line); here it reaches load_image, which names the file in the page. The instance's preprocess is replaced
    rather than gr.Image subclassed: Gradio writes a .pyi file beside the module of every Component subclass,
    which fails in a read-only install."""
    image = gr.Image(type="filepath", **kwargs)
    image.preprocess = lambda payload: None if payload is None else str(payload.path)
    return image


def _message(name: str, e: Exception) -> str:
    """One line for the page, naming the uploaded file by its own name."""
    what = getattr(e, "what", None) or str(e)
    fix = getattr(e, "fix", None)
    text = what if what.startswith(f"{name}:") else f"{name}: {what}"
    return text + (f" ({fix})" if fix else "")


def build_demo(segmenter, batcher=None, examples: list[str] | None = None, max_files: int = 16,
               max_age_s: float = 3600.0):
    """Build the Blocks for `segmenter` (requests go through `batcher`, created if not given).

    examples: image paths, or None for the validation images recorded in the artifact's manifest. A visitor's
    result files are removed once newer ones replace them (see files.py), when they close the page, or after
    max_age_s idle seconds; `demo.nfdseg_close()` removes the rest and closes the batcher."""
    gr = _gradio()
    from PIL import Image

    from nfdseg.serve import MicroBatcher

    batcher = batcher or MicroBatcher(segmenter, max_batch=8, max_wait_ms=10, max_queue=128)
    names, palette = segmenter.class_names, segmenter.palette
    info = segmenter.describe()
    files_store = ResultFiles(max_age_s)
    examples_from = "given"
    if examples is None:
        try:
            examples, examples_from = example_images(segmenter.manifest, files_store.root / "examples")
        except ImportError:  # a runtime-only install without the data layer's formats
            examples, examples_from = [], "unavailable"

    def segment(image: str | None, files: list | None, alpha: float, request: gr.Request):
        """Returns gallery items, legend html, status markdown, label-map files, and state for re-blending."""
        inputs: list[tuple[str, Any]] = []
        if image is not None:
            inputs.append((Path(image).name if isinstance(image, str) else "image", image))
        for f in (files or [])[:max_files]:
            path = f if isinstance(f, str) else getattr(f, "name", str(f))
            inputs.append((Path(path).name, path))
        errors = []
        if files and len(files) > max_files:
            errors.append(f"only the first {max_files} of {len(files)} files were segmented")
        pending: list[tuple[str, np.ndarray, Future]] = []
        for name, src in inputs:
            try:
                rgb = load_image(src, limits=segmenter.limits, name=name)
                pending.append((name, rgb, batcher.submit(rgb)))
            except NfdsegError as e:  # bad upload or busy queue: tell the user, serve the rest
                errors.append(_message(name, e))
        results, lat, batch_sizes = [], [], []
        for name, rgb, fut in pending:
            t0 = time.perf_counter()
            try:
                pred = fut.result(timeout=60)
            except Exception as e:  # timeouts, shutdown, backend failure
                errors.append(_message(name, e))
                continue
            lat.append(pred.timings_ms.get("queue_ms", 0.0) + (time.perf_counter() - t0) * 1e3)
            batch_sizes.append(int(pred.timings_ms.get("batch_size", 1)))
            results.append((name, rgb, pred.labels))
        gallery, files_out = [], []
        shares = np.zeros(len(names))
        req_dir = files_store.for_request(_visitor(request))  # and this visitor's older results are removed
        for i, (name, rgb, labels) in enumerate(results):
            gallery.append((side_by_side(rgb, labels, palette, alpha), name))
            shares += class_shares(labels, len(names))
            label_path = req_dir / f"{Path(name).stem}_{i}_labels.png"
            Image.fromarray(labels).save(label_path)
            files_out.append(str(label_path))
        legend = legend_html(names, palette, shares / len(results) if results else None)
        status = status_markdown(info, len(results), lat, batch_sizes or [1], errors)
        state = [(name, rgb, labels) for name, rgb, labels in results]
        return gallery, legend, status, files_out or None, state

    def visitor_left(request: gr.Request):
        files_store.release(_visitor(request))

    # Gradio passes the visitor's session to a parameter annotated gr.Request; with postponed annotations the
    # string "gr.Request" cannot be resolved (gr is local here), so the class itself is put in place
    segment.__annotations__["request"] = visitor_left.__annotations__["request"] = gr.Request

    def reblend(state, alpha):
        return [(side_by_side(rgb, labels, palette, alpha), name) for name, rgb, labels in (state or [])]

    title = f"nfdseg · {segmenter.manifest.architecture}"
    # Gradio's own copies of uploads and shown results are deleted by Gradio after max_age_s (delete_cache)
    age = int(max_age_s)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(max(age // 4, 60), age)) as demo:
        gr.HTML(f"<style>{LEGEND_CSS}</style>")
        gr.Markdown(f"# {title}\nSemantic segmentation by {model_origin(segmenter.manifest)}. "
                    f"Runtime: `{info['backend']}` on `{info['device']}` ({info['precision']}), "
                    f"{len(names)} classes, model input {info['input_size'][0]}×{info['input_size'][1]}.")
        state = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                # a file path, not pixels: the file's own name goes into messages, and load_image applies EXIF
                image = _path_image(gr, label="Image", sources=["upload", "clipboard"], elem_id="nfd-image")
                files = gr.File(label="…or several images", file_count="multiple", file_types=["image"],
                                elem_id="nfd-files")
                alpha = gr.Slider(0.0, 1.0, value=0.55, step=0.05, label="Overlay opacity", elem_id="nfd-alpha")
                run = gr.Button("Segment", variant="primary", elem_id="nfd-run")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[image],
                                label="Examples" if examples_from == "given" else f"Examples ({examples_from})")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Input | segmentation", columns=1, object_fit="contain",
                                     elem_id="nfd-gallery", format="png")
                status = gr.Markdown(status_markdown(info, 0, [], [1], []), elem_id="nfd-status")
                legend = gr.HTML(legend_html(names, palette), elem_id="nfd-legend")
                downloads = gr.File(label="Label maps (PNG, pixel value = class id)", file_count="multiple",
                                    elem_id="nfd-downloads")
        outputs = [gallery, legend, status, downloads, state]
        run.click(segment, [image, files, alpha], outputs, api_name="segment", concurrency_limit=32)
        image.upload(segment, [image, files, alpha], outputs, api_name=False, concurrency_limit=32)
        alpha.release(reblend, [state, alpha], [gallery], api_name=False)
        demo.unload(visitor_left)

    def close() -> None:
        batcher.close()
        files_store.close()

    demo.nfdseg_batcher = batcher  # for callers that want to close it
    demo.nfdseg_files = files_store
    demo.nfdseg_examples = (list(examples or []), examples_from)
    demo.nfdseg_close = close  # the batcher, then every temporary file the demo wrote
    return demo


def _visitor(request) -> str:
    """The visitor's session (one browser tab, or one API client); a request without one is its own visitor,
    cleaned up by age, so that it never removes another caller's results."""
    return getattr(request, "session_hash", None) or f"request-{uuid.uuid4().hex}"


def launch(artifact: str, host: str = "127.0.0.1", port: int = 7860, share: bool = False, backend: str = "auto",
           device: str = "auto", **kwargs) -> None:
    from nfdseg.serve import Segmenter

    seg = Segmenter(artifact, backend=backend, device=device, **kwargs)
    demo = build_demo(seg)
    demo.queue(default_concurrency_limit=32, max_size=256)
    log.info("demo on http://%s:%d (%s on %s)", host, port, seg.describe()["backend"], seg.describe()["device"])
    try:
        demo.launch(server_name=host, server_port=port, share=share, show_error=False)
    finally:
        demo.nfdseg_close()
