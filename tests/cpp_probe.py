"""Helpers of tests/test_cpp_example.py: a probe model whose labels read back the preprocessed pixels, and
test images of every kind the runtime decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfdseg.manifest import ClassSpec, Manifest, OnnxInfo, PreprocessSpec, TensorSpec, default_palette, write_manifest

PROBE_CLASSES = 256


def make_probe_export(out: Path, color_order: str = "RGB", input_size: tuple[int, int] = (24, 20)) -> Path:
    """An export directory (model.onnx + model.json) whose 1x1 conv makes the label of each pixel the nearest of
    256 levels to v = x_R + 0.37 x_G + 0.11 x_B of the normalised input (logit_k = 2 c_k v - c_k^2): a change of
    one grey level in the resized image moves the label, so equal labels mean equal preprocessing."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mix = np.array([1.0, 0.37, 0.11], np.float32)
    levels = np.linspace(-3.0, 3.5, PROBE_CLASSES).astype(np.float32)
    weight = (2 * levels[:, None] * mix[None, :]).reshape(PROBE_CLASSES, 3, 1, 1).astype(np.float32)
    bias = (-(levels ** 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W", "B"], ["logits"])], "probe",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", PROBE_CLASSES, "H", "W"])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / "model.onnx")
    manifest = Manifest(
        kind="onnx", artifact="model.onnx", architecture="probe",
        classes=ClassSpec(tuple(f"level{i}" for i in range(PROBE_CLASSES)), default_palette(PROBE_CLASSES)),
        preprocess=PreprocessSpec(input_size=input_size, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                                  color_order=color_order),
        inputs=(TensorSpec("input", "float32", ("N", 3, "H", "W"), "NCHW"),),
        outputs=(TensorSpec("logits", "float32", ("N", PROBE_CLASSES, "H", "W"), "NCHW"),),
        onnx=OnnxInfo(opset=17, ir_version=8))
    write_manifest(manifest, out / "model.json")
    return out


def _scene(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Gradients plus noise: every grey level region, so resize rounding shows."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h - 2, 1)], -1)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def make_images(out: Path) -> list[Path]:
    """Odd-sized test images, each with its own stem: RGB PNG at sizes above, below and at the input size,
    JPEG (4:4:4 and 4:2:0), grayscale, 16-bit grayscale, RGBA, gray+alpha, paletted PNG, BMP, GIF with a transparent colour, PPM, and the eight
    EXIF orientations as PNG (eXIf chunk) and JPEG (APP1)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    out.mkdir(parents=True, exist_ok=True)
    files = []

    def save(img, name, **kw):
        files.append(out / name)
        img.save(files[-1], **kw)

    for w, h in [(37, 53), (61, 29), (100, 17), (20, 24), (5, 3), (129, 97)]:
        save(Image.fromarray(_scene(rng, w, h)), f"rgb_{w}x{h}.png")
    save(Image.fromarray(_scene(rng, 37, 53)), "jpeg444.jpg", quality=90, subsampling=0)
    save(Image.fromarray(_scene(rng, 61, 29)), "jpeg420.jpg", quality=75, subsampling=2)
    save(Image.fromarray(_scene(rng, 61, 29)).convert("L"), "gray.png")
    save(Image.fromarray(rng.integers(0, 65535, (31, 45)).astype(np.uint16)), "gray16.png")
    save(Image.fromarray(np.dstack([_scene(rng, 29, 61), rng.integers(0, 256, (61, 29), dtype=np.uint8)]), "RGBA"),
         "rgba.png")
    save(Image.fromarray(np.dstack([_scene(rng, 30, 22)[..., 0], rng.integers(0, 256, (22, 30), dtype=np.uint8)]),
                         "LA"), "gray_alpha.png")
    save(Image.fromarray(_scene(rng, 40, 33)).convert("P", palette=Image.ADAPTIVE), "palette.png")
    save(Image.fromarray(_scene(rng, 45, 31)), "bitmap.bmp")
    save(Image.fromarray(_scene(rng, 47, 33)).convert("P", palette=Image.ADAPTIVE), "transparent.gif", transparency=5)
    save(Image.fromarray(_scene(rng, 27, 35)), "pixmap.ppm")
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(Image.fromarray(_scene(rng, 23, 41)), f"exif{orientation}_png.png", exif=exif)
        save(Image.fromarray(_scene(rng, 23, 41)), f"exif{orientation}_jpeg.jpg", exif=exif, quality=95)
    return files
