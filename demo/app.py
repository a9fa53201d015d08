"""The Gradio app: an image tab, a live webcam tab and a video tab (handlers.py does the work, this module lays
out the page). Every request goes through one shared MicroBatcher, so simultaneous users are
batched; a bad upload or a full queue produces a message in the page that names the uploaded file (never a
server path), never a stack trace. Uploads are decoded by nfdseg.preprocess.load_image, so EXIF orientation is
applied as everywhere else; each visitor's result files are removed when they are no longer needed (files.py)."""

from __future__ import annotations

import logging

from nfdseg.errors import MissingDependencyError

from .examples import example_images
from .files import ResultFiles
from .handlers import DemoResources, ImageHandlers, StreamHandlers
from .render import LEGEND_CSS, legend_html, model_origin, status_markdown

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


def _layout_images(gr, h: ImageHandlers, res: DemoResources, info: dict) -> None:
    """The image tab: upload one image or several files, see input | overlay, legend, status, label maps."""
    names, palette = h.names, h.palette
    state = gr.State([])
    with gr.Row():
        with gr.Column(scale=1):
            # a file path, not pixels: the file's own name goes into messages, and load_image applies EXIF
            image = _path_image(gr, label="Image", sources=["upload", "clipboard"], elem_id="nfd-image")
            files = gr.File(label="…or several images", file_count="multiple", file_types=["image"],
                            elem_id="nfd-files")
            alpha = gr.Slider(0.0, 1.0, value=DEMO_ALPHA, step=0.05, label="Overlay opacity", elem_id="nfd-alpha")
            run = gr.Button("Segment", variant="primary", elem_id="nfd-run")
            if res.examples:
                gr.Examples(examples=[[p] for p in res.examples], inputs=[image],
                            label="Examples" if res.examples_from == "given" else f"Examples ({res.examples_from})")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Input | segmentation", columns=1, object_fit="contain",
                                 elem_id="nfd-gallery", format="png")
            status = gr.Markdown(status_markdown(info, 0, [], [1], []), elem_id="nfd-status")
            legend = gr.HTML(legend_html(names, palette), elem_id="nfd-legend")
            downloads = gr.File(label="Label maps (PNG, pixel value = class id)", file_count="multiple",
                                elem_id="nfd-downloads")
    outputs = [gallery, legend, status, downloads, state]
    run.click(h.segment, [image, files, alpha], outputs, api_name="segment", concurrency_limit=32)
    image.upload(h.segment, [image, files, alpha], outputs, api_name=False, concurrency_limit=32)
    alpha.release(h.reblend, [state, alpha], [gallery], api_name=False)


def _layout_webcam(gr, h: StreamHandlers) -> None:
    """The webcam tab: the browser streams camera frames; each comes back as an overlay with its latency."""
    with gr.Row():
        with gr.Column():
            cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam", elem_id="nfd-webcam")
            alpha = gr.Slider(0.0, 1.0, value=DEMO_ALPHA, step=0.05, label="Overlay opacity", elem_id="nfd-cam-alpha")
        with gr.Column():
            shown = gr.Image(label="Live segmentation", elem_id="nfd-cam-out", format="jpeg")
            status = gr.Markdown("Start the webcam to segment it live.", elem_id="nfd-cam-status")
    # stream_every: a frame each 0.1 s at most; Gradio skips frames sent while one is still being answered
    cam.stream(h.webcam_frame, [cam, alpha], [shown, status], api_name="webcam", stream_every=0.1,
               time_limit=300, concurrency_limit=8)


def _layout_video(gr, h: StreamHandlers) -> None:
    """The video tab: upload a clip, get the overlay video back with fps and per-stage latency."""
    with gr.Row():
        with gr.Column():
            clip = gr.Video(sources=["upload"], label="Video", elem_id="nfd-video")
            alpha = gr.Slider(0.0, 1.0, value=DEMO_ALPHA, step=0.05, label="Overlay opacity", elem_id="nfd-video-alpha")
            run = gr.Button("Segment video", variant="primary", elem_id="nfd-video-run")
        with gr.Column():
            shown = gr.Video(label="Segmented video", elem_id="nfd-video-out")
            status = gr.Markdown(f"Upload a video: up to {h.max_video_frames} frames are segmented.",
                                 elem_id="nfd-video-status")
    run.click(h.video, [clip, alpha], [shown, status], api_name="segment_video", concurrency_limit=2)


DEFAULT_PORT = 7860  # Gradio's own default, which its docs and users expect; `nfdseg demo --port`, the Docker image

# The demo's own batcher settings, deliberately not the batcher's defaults (serve/batcher.py; the batch size is its
# default): visitors reach the demo over HTTP, where one request takes ~127 ms through Gradio alone (README, "Demo"),
# so waiting up to 10 ms for another visitor's image to share the backend call costs a visitor little; and a queue
# of half the default makes a flooded demo say "busy" in the page sooner instead of keeping a visitor waiting behind
# hundreds of images. Neither value was tuned by measurement.
DEMO_MAX_WAIT_MS = 10.0
DEMO_MAX_QUEUE = 128
# The sliders' starting opacity: a touch above predict's OVERLAY_ALPHA, so the classes read on a laptop screen
DEMO_ALPHA = 0.55


def _resources(segmenter, batcher, examples, max_age_s: float) -> DemoResources:
    from nfdseg.serve import MicroBatcher
    from nfdseg.serve.batcher import DEFAULT_MAX_BATCH

    batcher = batcher or MicroBatcher(segmenter, max_batch=DEFAULT_MAX_BATCH, max_wait_ms=DEMO_MAX_WAIT_MS,
                                      max_queue=DEMO_MAX_QUEUE)
    res = DemoResources(segmenter, batcher, ResultFiles(max_age_s))
    if examples is None:
        try:
            res.examples, res.examples_from = example_images(segmenter.manifest, res.files.root / "examples")
        except ImportError:  # a runtime-only install without the data layer's formats
            res.examples, res.examples_from = [], "unavailable"
    else:
        res.examples = list(examples)
    return res


def build_demo(segmenter, batcher=None, examples: list[str] | None = None, max_files: int = 16,
               max_age_s: float = 3600.0, max_video_frames: int = 900):
    """Build the Blocks for `segmenter` (requests go through `batcher`, created if not given): tabs for images,
    the webcam (live) and video files.

    examples: image paths, or None for the validation images recorded in the artifact's manifest. A visitor's
    result files are removed once newer ones replace them (see files.py), when they close the page, or after
    max_age_s idle seconds. The returned Blocks carries `nfdseg` (the DemoResources: batcher, files, examples);
    `demo.nfdseg_close()` removes the files and closes the batcher (`nfdseg_batcher`, `nfdseg_files`,
    `nfdseg_examples` are its parts, as earlier callers read them)."""
    gr = _gradio()
    res = _resources(segmenter, batcher, examples, max_age_s)
    images, streams = ImageHandlers(res, max_files), StreamHandlers(res, max_video_frames)
    # Gradio passes the visitor's session to a parameter annotated gr.Request (resolved from the annotation)
    for fn in (ImageHandlers.segment, ImageHandlers.visitor_left, StreamHandlers.video):
        fn.__annotations__["request"] = gr.Request
    info = res.info
    title = f"nfdseg · {segmenter.manifest.architecture}"
    # Gradio's own copies of uploads and shown results are deleted by Gradio after max_age_s (delete_cache)
    age = int(max_age_s)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(max(age // 4, 60), age)) as demo:
        gr.HTML(f"<style>{LEGEND_CSS}</style>")
        gr.Markdown(f"# {title}\nSemantic segmentation by {model_origin(segmenter.manifest)}. "
                    f"Runtime: `{info['backend']}` on `{info['device']}` ({info['precision']}), "
                    f"{len(images.names)} classes, model input {info['input_size'][0]}×{info['input_size'][1]}.")
        with gr.Tab("Images"):
            _layout_images(gr, images, res, info)
        with gr.Tab("Webcam", elem_id="nfd-tab-webcam"):
            _layout_webcam(gr, streams)
        with gr.Tab("Video", elem_id="nfd-tab-video"):
            _layout_video(gr, streams)
        demo.unload(images.visitor_left)
    demo.nfdseg = res
    demo.nfdseg_batcher, demo.nfdseg_files = res.batcher, res.files
    demo.nfdseg_examples = (list(res.examples), res.examples_from)
    demo.nfdseg_close = res.close
    return demo


def launch(artifact: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, share: bool = False, backend: str = "auto",
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
