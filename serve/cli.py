"""`nfdseg bench`, `nfdseg eval` and `nfdseg predict`: the serve stage from the command line."""

from __future__ import annotations

from pathlib import Path

from nfdseg.data.sources import FORMATS
from nfdseg.preprocess import OVERLAY_ALPHA

from .backends import BACKENDS, PRECISIONS
from .batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS


def _ints(text: str) -> list[int]:
    from nfdseg.errors import ConfigError

    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got '{text}'", fix="e.g. 1,4,8") from None
    if any(v < 1 for v in vals):
        raise ConfigError(f"values must be at least 1, got '{text}'")
    return vals


def _segmenter(args):
    from .segmenter import Segmenter

    return Segmenter(args.artifact, backend=args.backend, device=args.device, precision=args.precision,
                     allow_rtx=getattr(args, "allow_rtx", False), cuda_graphs=getattr(args, "cuda_graphs", False))


def cmd_bench(args) -> int:
    from nfdseg.fsutil import write_json_atomic

    from .bench import BenchBudget, format_bench, run_bench

    budget = BenchBudget(duration_s=args.duration, min_iters=args.min_iters, warmup=args.warmup)
    load_budget = BenchBudget(duration_s=args.duration, min_iters=args.requests, warmup=args.warmup,
                              max_iters=max(args.requests, BenchBudget.max_iters))
    seg = _segmenter(args)
    report = run_bench(seg, _ints(args.batch), _ints(args.concurrency) if args.concurrency else [], budget,
                       load_budget, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, progress=not args.quiet)
    print(format_bench(report))
    if args.json:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 0


def cmd_eval(args) -> int:
    from nfdseg.fsutil import write_json_atomic

    from .evaluate import evaluate, load_eval_source

    seg = _segmenter(args)
    src = load_eval_source(seg, args.data, args.format, args.split)
    res = evaluate(seg, src, batch=args.batch, limit=args.limit, progress=not args.quiet)
    d = seg.describe()
    print(f"{d['backend']} on {d['device']} ({d['precision']}): mIoU {res['miou']:.2f}% on {res['images']} images, "
          f"pixel accuracy {res['pixel_accuracy']:.2f}%, p95 {res['latency_per_image']['p95_ms']:.2f} ms/image")
    for name, iou in res["per_class_iou"].items():
        print(f"  {name:<20} {'-' if iou is None else f'{iou:6.2f}'}")
    failures = []
    if args.min_miou is not None and res["miou"] < args.min_miou:
        failures.append(f"mIoU {res['miou']:.2f}% < --min-miou {args.min_miou}")
    p95 = res["latency_per_image"]["p95_ms"]
    if args.max_p95_ms is not None and p95 > args.max_p95_ms:
        failures.append(f"p95 latency {p95:.2f} ms > --max-p95-ms {args.max_p95_ms}")
    res["checks"] = {"passed": not failures, "failures": failures}
    if args.json:
        write_json_atomic(args.json, res)
    for f in failures:
        print(f"CHECK FAILED: {f}")
    return 1 if failures else 0


def cmd_predict(args) -> int:
    """`nfdseg predict`; an output that cannot be written (a folder under a file, no permission, a full disk, a
    file-size limit mid-encode) is one OutputError (exit 2), never a traceback."""
    from nfdseg.errors import output_error

    try:
        return _predict(args)
    except OSError as e:
        err = output_error(args.out, e)
        if err is None:
            raise
        raise err from None


def _predict(args) -> int:
    import numpy as np
    from PIL import Image

    from nfdseg.errors import ConfigError, InputError
    from nfdseg.fsutil import atomic_path, write_json_atomic
    from nfdseg.preprocess import load_image, overlay

    from .predict_video import output_stems, source_stem
    from .video import audio_input_error, is_video_source

    stems = output_stems(args.images)  # one naming rule: no output overwrites another
    renamed = {src: stem for src, stem in stems.items() if stem != source_stem(src)}
    for src, stem in renamed.items():
        print(f"output name: {src} -> {stem}_* (another source has the same name)")
    streams = [src for src in args.images if is_video_source(src)]
    if args.labels_every < 0 or args.max_frames < 0:
        raise ConfigError("--labels-every and --max-frames must be 0 or more",
                          seen=f"{args.labels_every}, {args.max_frames}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # before the model loads: an unwritable --out fails at once
    seg = _segmenter(args)
    if args.json:
        write_json_atomic(out / "outputs.json", {"outputs": stems, "renamed": renamed})
    bad = 0
    for src in streams:
        bad += _predict_stream(seg, src, out, args, stems[str(src)])
    for path in (p for p in args.images if p not in streams):
        try:
            audio = audio_input_error(path)
            if audio is not None:
                raise audio
            img = load_image(path)
        except InputError as e:
            print(f"skipped: {e}")
            bad += 1
            continue
        pred = seg.predict(img)
        stem = stems[str(path)]
        for name, pixels in ((f"{stem}_labels.png", pred.labels),
                             (f"{stem}_overlay.png", overlay(img, pred.labels, seg.palette, args.alpha))):
            with atomic_path(out / name) as tmp:  # a full disk leaves no truncated PNG under the final name
                Image.fromarray(pixels).save(tmp, format="PNG")
        shares = np.bincount(pred.labels.ravel(), minlength=len(seg.class_names)) / pred.labels.size * 100
        top = ", ".join(f"{seg.class_names[i]} {shares[i]:.1f}%" for i in np.argsort(-shares)[:3] if shares[i] > 0)
        print(f"{path}: {top} ({pred.timings_ms['infer_ms']:.1f} ms infer)")
    return 1 if bad else 0


def _predict_stream(seg, source: str, out: Path, args, stem: str) -> int:
    """One video, camera or stream URL: overlay MP4 (+ label maps), then a summary line; 0 when it went well."""
    from nfdseg.fsutil import write_json_atomic

    from .predict_video import VideoJob, format_summary, segment_video

    job = VideoJob(out, alpha=args.alpha, labels_every=args.labels_every, max_frames=args.max_frames,
                   live=True if args.live else None, pipelined=not args.plain_loop)
    summary = segment_video(seg, source, job, stem)
    print(format_summary(summary))
    if args.json:
        write_json_atomic(out / f"{stem}_video.json", summary)
    return 0


def _runtime_args(p) -> None:
    p.add_argument("artifact", help="export directory, .onnx, .engine, or checkpoint directory")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="runtime (default auto: TensorRT, then on a CPU the faster of onnxruntime and OpenVINO by a "
                        "timed probe, then torch; the choice is logged)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto); with --backend openvino also "
                        "an OpenVINO device: GPU, NPU, AUTO, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: fp16 on GPU, fp32 on CPU; int8: model.int8.onnx (from `nfdseg export --int8`) or "
                        "an INT8 engine, never picked by auto")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="torch backend on a GPU: capture one CUDA graph per input shape and replay it (less "
                        "launch overhead for small batches); other backends and the CPU run without, with a warning")


def register(sub) -> None:
    b = sub.add_parser("bench", help="latency and throughput per batch size and concurrency",
                       description="Warm up, then time infer-only and end-to-end (decode + preprocess + infer + "
                                   "postprocess) latency per batch size, and the micro-batcher against one-by-one "
                                   "serving per concurrency level. Each row runs for --duration seconds and at least "
                                   "--min-iters calls (like trtexec --duration/--iterations), with a progress bar. "
                                   "Prints a table; --json writes the report, budget included.")
    _runtime_args(b)
    b.add_argument("--batch", default="1,4,8", help="batch sizes (default 1,4,8)")
    b.add_argument("--concurrency", default="1,8", help="concurrent callers through the micro-batcher (default 1,8; '' to skip)")
    b.add_argument("--duration", type=float, default=3.0,
                   help="timed seconds per row and per concurrency level (default 3; 0 = count only)")
    b.add_argument("--min-iters", "--iters", dest="min_iters", type=int, default=5,
                   help="timed calls per row at least, even past --duration (default 5)")
    b.add_argument("--warmup", type=int, default=2, help="untimed calls before each row (default 2)")
    b.add_argument("--requests", type=int, default=32,
                   help="requests per concurrency level at least, even past --duration (default 32)")
    b.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"micro-batcher max batch (default {DEFAULT_MAX_BATCH})")
    b.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS,
                   help=f"micro-batcher max wait (default {DEFAULT_MAX_WAIT_MS:g} ms)")
    b.add_argument("--json", help="write the JSON report here")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("eval", help="mIoU and per-class IoU on a dataset, with pass/fail thresholds",
                       description="Segment a validation set and report mIoU (%%) and per-class IoU. --min-miou and "
                                   "--max-p95-ms make the command exit 1 when a check fails, for CI and release gates.")
    _runtime_args(e)
    e.add_argument("--data", default="default",
                   help="dataset root, or 'default' for the validation split recorded in the artifact's manifest")
    e.add_argument("--format", default="folder", choices=tuple(FORMATS),
                   help="format of --data (default folder)")
    e.add_argument("--split", default="val", help="split name (default val)")
    e.add_argument("--batch", type=int, default=8, help="images per call (default 8)")
    e.add_argument("--limit", type=int, default=0, help="evaluate at most this many images (default all)")
    e.add_argument("--min-miou", type=float, help="fail (exit 1) when mIoU (%%) is below this")
    e.add_argument("--max-p95-ms", type=float, help="fail (exit 1) when p95 latency per image (ms) is above this")
    e.add_argument("--json", help="write the JSON report here")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="segment images, videos, cameras and stream URLs",
                       description="Segment each image; write <stem>_labels.png (class ids) and <stem>_overlay.png. "
                                   "A video file (.mp4, .mkv, .webm, .avi, .mov, ...), a camera index (0 = the first "
                                   "camera, /dev/video0 on Linux) or a stream URL (rtsp://, http://, ...) is "
                                   "segmented as a stream (decoding, preprocessing and inference overlapped) into "
                                   "<stem>_overlay.mp4 (H.264), with label maps on request; prints frames, fps and "
                                   "per-frame p50/p99 ms of decode / preprocess / infer / post / encode. Cameras and "
                                   "URLs drop frames the model cannot keep up with (counted); files never do. A "
                                   "camera runs until it stops, --max-frames, or Ctrl-C (the video is kept). "
                                   "Video needs `pip install 'nfdseg[video]'` (PyAV).")
    _runtime_args(p)
    p.add_argument("images", nargs="+", metavar="source",
                   help="image files, video files, camera indices (0) or stream URLs")
    p.add_argument("--out", default="predictions", help="output directory (default predictions/)")
    p.add_argument("--alpha", type=float, default=OVERLAY_ALPHA, help=f"overlay opacity 0-1 (default {OVERLAY_ALPHA})")
    p.add_argument("--labels-every", type=int, default=0, metavar="N",
                   help="streams: also write the label map of every Nth frame to <stem>_labels/frameNNNNNN.png "
                        "(1 = every frame; default 0 = none)")
    p.add_argument("--max-frames", type=int, default=0, help="streams: stop after this many frames (default 0 = all)")
    p.add_argument("--live", action="store_true",
                   help="streams: read video files at their own frame rate and drop frames the model cannot keep up "
                        "with, as a camera does (a rehearsal of a live deployment)")
    p.add_argument("--plain-loop", action="store_true",
                   help="streams: decode, infer and encode one frame after another in one thread (for comparison; "
                        "the default overlaps them)")
    p.add_argument("--json", action="store_true", help="also write outputs.json (each source -> its output "
                   "name) and, per stream, <stem>_video.json with the summary")
    p.set_defaults(func=cmd_predict)
