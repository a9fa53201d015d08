"""The Gradio app. Every request goes through one shared MicroBatcher, so simultaneous users are
batched; a bad upload or a full queue produces a message in the page, never a stack trace."""

from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from nfdseg.errors import MissingDependencyError, NfdsegError

from .render import LEGEND_CSS, class_shares, legend_html, side_by_side, status_markdown

log = logging.getLogger(__name__)


def _gradio():
    try:
        import gradio as gr
    except ImportError:
        raise MissingDependencyError("the demo needs Gradio", fix="pip install 'nfdseg[demo]'") from None
    return gr


def example_images(segmenter, n: int = 4, out_dir: Path | None = None) -> list[str]:
    """PNG files of validation scenes from the built-in dataset (the artifact's data config when synthetic)."""
    from PIL import Image

    from nfdseg.distill.data.synthetic import generate_scene

    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="nfdseg-examples-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = segmenter.manifest.preprocess.input_size
    size = (max(h, 192), max(w, 192))  # large enough to look at; the model resizes
    paths = []
    for i in range(n):
        p = out_dir / f"example_{i}.png"
        if not p.exists():
            Image.fromarray(generate_scene(20_000 + i, size)[0]).save(p)
        paths.append(str(p))
    return paths


def build_demo(segmenter, batcher=None, examples: list[str] | None = None, max_files: int = 16):
    """Build the Blocks for `segmenter` (requests go through `batcher`, created if not given)."""
    gr = _gradio()
    from PIL import Image

    from nfdseg.serve import MicroBatcher

    batcher = batcher or MicroBatcher(segmenter, max_batch=8, max_wait_ms=10, max_queue=128)
    names, palette = segmenter.class_names, segmenter.palette
    info = segmenter.describe()
    out_root = Path(tempfile.mkdtemp(prefix="nfdseg-demo-"))
    if examples is None:
        try:
            examples = example_images(segmenter)
        except ImportError:  # serve-only install without the distill stage: no generated examples
            examples = []

    def segment(image: np.ndarray | None, files: list | None, alpha: float):
        """Returns gallery items, legend html, status markdown, label-map files, and state for re-blending."""
        inputs: list[tuple[str, Any]] = []
        if image is not None:
            inputs.append(("image", image))
        for f in (files or [])[:max_files]:
            path = f if isinstance(f, str) else getattr(f, "name", str(f))
            inputs.append((Path(path).name, path))
        errors = []
        if files and len(files) > max_files:
            errors.append(f"only the first {max_files} of {len(files)} files were segmented")
        pending: list[tuple[str, np.ndarray, Future]] = []
        for name, src in inputs:
            try:
                rgb = segmenter.decode(src)[0]
                pending.append((name, rgb, batcher.submit(rgb)))
            except NfdsegError as e:  # bad upload or busy queue: tell the user, serve the rest
                errors.append(f"{name}: {e.what}" + (f" ({e.fix})" if e.fix else ""))
        results, lat, batch_sizes = [], [], []
        for name, rgb, fut in pending:
            t0 = time.perf_counter()
            try:
                pred = fut.result(timeout=60)
            except Exception as e:  # timeouts, shutdown, backend failure
                errors.append(f"{name}: {getattr(e, 'what', str(e))}")
                continue
            lat.append(pred.timings_ms.get("queue_ms", 0.0) + (time.perf_counter() - t0) * 1e3)
            batch_sizes.append(int(pred.timings_ms.get("batch_size", 1)))
            results.append((name, rgb, pred.labels))
        gallery, files_out = [], []
        shares = np.zeros(len(names))
        req_dir = Path(tempfile.mkdtemp(dir=out_root))
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

    def reblend(state, alpha):
        return [(side_by_side(rgb, labels, palette, alpha), name) for name, rgb, labels in (state or [])]

    title = f"nfdseg · {segmenter.manifest.architecture}"
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.HTML(f"<style>{LEGEND_CSS}</style>")
        gr.Markdown(f"# {title}\nSemantic segmentation by a student distilled with **Normalized Feature Distillation**. "
                    f"Runtime: `{info['backend']}` on `{info['device']}` ({info['precision']}), "
                    f"{len(names)} classes, model input {info['input_size'][0]}×{info['input_size'][1]}.")
        state = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Image", type="numpy", sources=["upload", "clipboard"], elem_id="nfd-image")
                files = gr.File(label="…or several images", file_count="multiple", file_types=["image"],
                                elem_id="nfd-files")
                alpha = gr.Slider(0.0, 1.0, value=0.55, step=0.05, label="Overlay opacity", elem_id="nfd-alpha")
                run = gr.Button("Segment", variant="primary", elem_id="nfd-run")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[image], label="Examples (built-in dataset)")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Input | segmentation", columns=1, height=460, object_fit="contain",
                                     elem_id="nfd-gallery", format="png")
                status = gr.Markdown(status_markdown(info, 0, [], [1], []), elem_id="nfd-status")
                legend = gr.HTML(legend_html(names, palette), elem_id="nfd-legend")
                downloads = gr.File(label="Label maps (PNG, pixel value = class id)", file_count="multiple",
                                    elem_id="nfd-downloads")
        outputs = [gallery, legend, status, downloads, state]
        run.click(segment, [image, files, alpha], outputs, api_name="segment", concurrency_limit=32)
        image.upload(segment, [image, files, alpha], outputs, api_name=False, concurrency_limit=32)
        alpha.release(reblend, [state, alpha], [gallery], api_name=False)
    demo.nfdseg_batcher = batcher  # for callers that want to close it
    return demo


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
        demo.nfdseg_batcher.close()
