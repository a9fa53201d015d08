"""What the demo shows, as plain functions (testable without Gradio): overlays, legend, status lines."""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np

from nfdseg.preprocess import overlay


def side_by_side(image: np.ndarray, labels: np.ndarray, palette, alpha: float) -> np.ndarray:
    """Input on the left, the overlay on the right, with a 4 px white gutter."""
    ov = overlay(image, labels, palette, alpha)
    gutter = np.full((image.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([image, gutter, ov], axis=1)


def class_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Percentage of pixels per class."""
    return np.bincount(labels.ravel(), minlength=num_classes)[:num_classes] / max(labels.size, 1) * 100.0


def legend_html(names: Sequence[str], palette, shares: np.ndarray | None = None) -> str:
    """A legend: colour swatch, class name and (optionally) its share of the image(s), largest first."""
    order = np.argsort(-shares) if shares is not None else range(len(names))
    rows = []
    for i in order:
        r, g, b = palette[i]
        share = f"<span class='nfd-share'>{shares[i]:.1f}%</span>" if shares is not None else ""
        rows.append(f"<li class='nfd-class' data-class='{html.escape(names[i])}'>"
                    f"<span class='nfd-swatch' style='background: rgb({r},{g},{b})'></span>"
                    f"<span class='nfd-name'>{html.escape(names[i])}</span>{share}</li>")
    return ("<div class='nfd-legend'><ul style='list-style:none;padding:0;margin:0;columns:2'>" + "".join(rows)
            + "</ul></div>")


LEGEND_CSS = """
.nfd-class {display:flex; align-items:center; gap:.5em; margin:.15em 0; break-inside: avoid;}
.nfd-swatch {display:inline-block; width:1.1em; height:1.1em; border-radius:3px; border:1px solid #8884;}
.nfd-share {margin-left:auto; font-variant-numeric: tabular-nums; opacity:.8;}
.nfd-error {color:#b00020; font-weight:600;}
/* Results fill the gallery's width at their own aspect ratio: Gradio draws square cells in a fixed-height box, so
   a wide street photo sat at the bottom of a tall blank area. Tall images are capped at 75 % of the window. */
#nfd-gallery .grid-wrap {height: auto !important; max-height: none !important; min-height: 0 !important;}
#nfd-gallery .grid-container {grid-auto-rows: auto !important; padding-top: 30px !important;}
#nfd-gallery .thumbnail-item {aspect-ratio: auto !important; height: auto !important;}
#nfd-gallery .thumbnail-item img {width: 100% !important; height: auto !important; max-height: 75vh;
                                   object-fit: contain;}
"""


LOSS_NAMES = {"nfd": "**Normalized Feature Distillation**", "kd": "logits distillation (KD)",
              "cwd": "channel-wise distillation (CWD)"}


def model_origin(manifest) -> str:
    """How the served model was trained, from its manifest: which distillation, or none (the pipeline exports the
    undistilled baseline when it beat the distilled student, and says so in metrics.student_choice)."""
    loss = (manifest.config.get("distill") or {}).get("loss")
    if loss in LOSS_NAMES:
        return f"a student distilled with {LOSS_NAMES[loss]}"
    if loss == "none":
        choice = manifest.metrics.get("student_choice") or {}
        why = (f" (it beat the distilled student on validation, {choice['baseline_miou']:.2f} vs "
               f"{choice['student_miou']:.2f} % mIoU)") if choice.get("deployed") == "baseline" and choice.get(
               "student_miou") is not None else ""
        return "a student trained without distillation" + why
    return "a segmentation model"


def status_markdown(info: dict, n_ok: int, latencies_ms: list[float], batch_sizes: list[int], errors: list[str]) -> str:
    lines = []
    if n_ok:
        lat = ", ".join(f"{v:.1f}" for v in latencies_ms[:8])
        lines.append(f"**{n_ok} image{'s' if n_ok != 1 else ''} segmented** in {lat} ms "
                     f"(batched with up to {max(batch_sizes)} request{'s' if max(batch_sizes) != 1 else ''}) · "
                     f"`{info['backend']}` on `{info['device']}` · {info['precision']}")
    for e in errors:
        lines.append(f"<span class='nfd-error'>⚠ {html.escape(e)}</span>")
    if not lines:
        lines.append("Upload an image, or pick an example below.")
    return "\n\n".join(lines)
