"""`nfdseg demo ARTIFACT`: start the Gradio app."""

from __future__ import annotations

from nfdseg.serve.backends import BACKENDS, PRECISIONS

from .app import DEFAULT_PORT


def cmd_demo(args) -> int:
    from .app import launch

    launch(args.artifact, host=args.host, port=args.port, share=args.share, backend=args.backend, device=args.device,
           precision=args.precision)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="start the Gradio demo for an artifact",
                       description="Serve a web page where people upload images and see the segmentation overlay, "
                                   "legend, class shares and latency. Requests from simultaneous users are batched.")
    p.add_argument("artifact", help="export directory, .onnx, .engine, or checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--share", action="store_true", help="ask Gradio for a public share link (needs internet)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="runtime (default auto: TensorRT, then on a CPU the faster of onnxruntime and OpenVINO by a "
                        "timed probe, then torch; the page shows which runs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto); with --backend openvino also "
                        "an OpenVINO device: GPU, NPU, AUTO, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: fp16 on GPU, fp32 on CPU; int8: the export's model.int8.onnx (the page shows which runs)")
    p.set_defaults(func=cmd_demo)
