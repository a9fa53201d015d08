"""Image decoding, validation, pre- and post-processing shared by training, export, serving and the demo.

numpy + Pillow only. Training normalises with `normalize`, the runtime with `prepare_batch`: the
same arithmetic, so a served model sees exactly what it was trained on.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .manifest import PreprocessSpec

DEFAULT_MAX_PIXELS = 64_000_000  # ~8k x 8k; larger inputs are refused unless the limit is raised


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on accepted images: at least `min_side` pixels per side, at most `max_pixels` in total."""

    min_side: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS


EXIF_ORIENTATION = 0x0112  # 1 = upright; 5-8 swap width and height


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1-8) of an opened image, read from its header; 1 when absent or unreadable."""
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block must not make an otherwise good image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is displayed, i.e. after its EXIF orientation, without decoding pixels."""
    w, h = img.size
    return (h, w) if exif_orientation(img) in (5, 6, 7, 8) else (w, h)


def apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip a decoded image upright as its EXIF orientation says (phone photos); a no-op for upright ones."""
    if exif_orientation(img) == 1:
        return img
    return ImageOps.exif_transpose(img)


def _from_pil(img: Image.Image, name: str) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr = ((arr - lo) * scale).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _from_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(
            f"{name}: expected an HxW, HxWx1, HxWx3 or HxWx4 image array",
            seen=f"shape {tuple(arr.shape)}",
            fix="pass a uint8 HWC image (channels last)",
        )
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype in (np.float32, np.float64):
        if not np.isfinite(arr).all():
            raise InputError(f"{name}: image array contains NaN or inf", fix="pass finite pixel values")
        hi = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise InputError(f"{name}: unsupported image dtype", seen=str(arr.dtype),
                         fix="pass uint8 (0-255), uint16, or float in [0, 1]")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def load_image(
    src: Any, *, bgr: bool = False, limits: ImageLimits = ImageLimits(), name: str | None = None
) -> np.ndarray:
    """Decode `src` into a uint8 RGB HxWx3 array, or raise InputError saying why it cannot be used.

    `src` may be a path, raw bytes, a PIL image or a numpy array (HW, HWC with 1/3/4 channels; uint8,
    uint16 or float in [0, 1]). Files, bytes and PIL images are turned upright by their EXIF orientation,
    as every viewer shows them (arrays carry no EXIF). Grayscale is repeated to 3 channels, alpha is
    composited on black, 16-bit is scaled to 8-bit. Set `bgr=True` for arrays in OpenCV's BGR order.
    """
    label = name or (str(src) if isinstance(src, (str, Path)) else type(src).__name__)
    if isinstance(src, np.ndarray):
        arr = _from_array(src, label)
        if bgr:
            arr = np.ascontiguousarray(arr[..., ::-1])
    else:
        if isinstance(src, (str, Path)):
            if not Path(src).is_file():
                raise InputError(f"image file not found: {label}", fix="check the path")
        elif isinstance(src, (bytes, bytearray)):
            src = io.BytesIO(src)
        elif not isinstance(src, Image.Image):
            raise InputError(f"{label}: cannot read an image from this object", seen=type(src).__name__,
                             fix="pass a path, bytes, a PIL image or a numpy array")
        try:
            img = src if isinstance(src, Image.Image) else Image.open(src)
            w, h = img.size
            if w * h > limits.max_pixels:
                raise InputError(
                    f"{label}: image is too large", seen=f"{w}x{h} = {w * h} pixels, limit {limits.max_pixels}",
                    fix="downscale it, or raise the max_pixels limit",
                )
            img.load()
            img = apply_exif_orientation(img)
        except InputError:
            raise
        except Image.DecompressionBombError as e:  # Pillow refuses > 2x its MAX_IMAGE_PIXELS when opening
            n = re.search(r"\((\d+) pixels\)", str(e))
            raise InputError(f"{label}: image is too large",
                             seen=f"{n[1] + ' pixels' if n else e}, limit {limits.max_pixels}",
                             fix="downscale it, or raise the max_pixels limit") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            seen = f"{type(e).__name__}: {e}"
            if name and isinstance(src, (str, Path)):  # PIL quotes the path; the caller's name replaces it
                seen = seen.replace(str(src), name)
            raise InputError(f"{label}: not a readable image (corrupt, truncated or not an image format)",
                             seen=seen, fix="pass a PNG, JPEG, BMP, TIFF or WebP file") from None
        arr = _from_pil(img, label)
    h, w = arr.shape[:2]
    if h < limits.min_side or w < limits.min_side:
        raise InputError(f"{label}: image is too small to segment", seen=f"{w}x{h} pixels",
                         fix=f"pass an image at least {limits.min_side}x{limits.min_side}")
    if h * w > limits.max_pixels:
        raise InputError(f"{label}: image is too large", seen=f"{w}x{h} = {w * h} pixels, limit {limits.max_pixels}",
                         fix="downscale it, or raise the max_pixels limit")
    return arr


def resize_image(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 HxWx3 image to (height, width); a no-op when the size already matches."""
    h, w = size_hw
    if img.shape[0] == h and img.shape[1] == w:
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def resize_labels(labels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an HxW label map to (height, width)."""
    h, w = size_hw
    if labels.shape[0] == h and labels.shape[1] == w:
        return labels
    ys = (np.arange(h) * labels.shape[0] / h).astype(np.int64)
    xs = (np.arange(w) * labels.shape[1] / w).astype(np.int64)
    return labels[ys[:, None], xs[None, :]]


def normalize(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 3xHxW, scaled to [0, 1] then (x - mean) / std, in spec.color_order."""
    x = img.astype(np.float32) * (1.0 / 255.0)
    if spec.color_order.upper() == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def prepare_batch(images: Sequence[np.ndarray], spec: PreprocessSpec, normalize_in_graph: bool = False) -> np.ndarray:
    """Resize decoded RGB images to the model input and stack them.

    Returns float32 NCHW normalised input, or uint8 NHWC when the graph normalises itself.
    """
    size = tuple(spec.input_size)
    resized = [resize_image(im, size) for im in images]
    if normalize_in_graph:
        return np.stack(resized).astype(np.uint8)
    return np.stack([normalize(im, spec) for im in resized]).astype(np.float32)


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Map an HxW label map to an HxWx3 uint8 colour image (out-of-range labels are black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[np.clip(labels, 0, 255).astype(np.uint8)]


OVERLAY_ALPHA = 0.5  # the overlay's opacity: predict's images and videos (--alpha)


def overlay(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]],
            alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend a colourised label map over an RGB image; alpha in [0, 1] is the mask opacity."""
    alpha = float(min(max(alpha, 0.0), 1.0))
    color = colorize(labels, palette).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + color * alpha + 0.5).astype(np.uint8)
