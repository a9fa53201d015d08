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


def _xmp_packet(orientation: int, form: str = "attribute") -> bytes:
    value = (f'tiff:Orientation="{orientation}"/>' if form == "attribute"
             else f"><tiff:Orientation>{orientation}</tiff:Orientation></rdf:Description>")
    return ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
            'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
            f'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" {value}</rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()


def _jpeg_with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """`jpeg` with an APP1 segment holding `payload` right after SOI (as cameras and editors put XMP)."""
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _raw_profile_exif(orientation: int) -> str:
    """ImageMagick's PNG text chunk "Raw profile type exif": a header line, the length, then the block in hex."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    data = exif.tobytes()
    hexed = data.hex()
    return f"\nexif\n{len(data):8d}\n" + "\n".join(hexed[i:i + 72] for i in range(0, len(hexed), 72)) + "\n"


def _pnm(path: Path, magic: str, values: np.ndarray, maxval: int, comment: bool = False) -> Path:
    h, w = values.shape[:2]
    head = f"{magic}\n" + ("# written by a scanner\n" if comment else "") + f"{w} {h}\n{maxval}\n"
    body = values.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    path.write_bytes(head.encode() + body)
    return path


def make_pillow_cases(out: Path) -> dict[str, list[Path]]:
    """Files on which stb_image and Pillow disagree, by kind (issue 27): orientation from XMP (JPEG, PNG) and
    from PNG's "Raw profile type exif" text; PGM/PPM at maxvals other than 255; 32-bit BI_RGB BMP with a
    fourth byte that is not 255; PNGs that end without IEND."""
    import io
    import zlib

    from PIL import Image, PngImagePlugin

    rng = np.random.default_rng(11)
    out.mkdir(parents=True, exist_ok=True)
    cases: dict[str, list[Path]] = {"xmp_jpeg": [], "png_metadata": [], "pnm": [], "bmp32": [], "png_no_iend": []}
    buf = io.BytesIO()
    Image.fromarray(_scene(rng, 23, 41)).save(buf, format="JPEG", quality=95)
    for o, form in ((6, "attribute"), (8, "element"), (3, "attribute")):
        p = out / f"xmp{o}_{form}.jpg"
        p.write_bytes(_jpeg_with_app1(buf.getvalue(), b"http://ns.adobe.com/xap/1.0/\x00" + _xmp_packet(o, form)))
        cases["xmp_jpeg"].append(p)
    no_tag = Image.Exif()
    no_tag[0x010F] = "camera"  # EXIF without an orientation tag: Pillow then reads the XMP's
    p = out / "exif_without_orientation_xmp5.jpg"
    buf2 = io.BytesIO()
    Image.fromarray(_scene(rng, 23, 41)).save(buf2, format="JPEG", quality=95, exif=no_tag)
    p.write_bytes(_jpeg_with_app1(buf2.getvalue(), b"http://ns.adobe.com/xap/1.0/\x00" + _xmp_packet(5)))
    cases["xmp_jpeg"].append(p)
    for name, o, add in (("raw_profile_text", 6, lambda i, t: i.add_text("Raw profile type exif", t)),
                         ("raw_profile_ztxt", 7, lambda i, t: i.add_text("Raw profile type exif", t, zip=True)),
                         ("raw_profile_itxt", 3, lambda i, t: i.add_itxt("Raw profile type exif", t, zip=True))):
        info = PngImagePlugin.PngInfo()
        add(info, _raw_profile_exif(o))
        cases["png_metadata"].append(out / f"{name}{o}.png")
        Image.fromarray(_scene(rng, 23, 41)).save(cases["png_metadata"][-1], pnginfo=info)
    for name, o, add in (("xmp_itxt", 8, lambda i, x: i.add_itxt("XML:com.adobe.xmp", x)),
                         ("xmp_itxt_zip", 5, lambda i, x: i.add_itxt("XML:com.adobe.xmp", x, zip=True)),
                         ("xmp_text", 6, lambda i, x: i.add_text("XML:com.adobe.xmp", x))):
        info = PngImagePlugin.PngInfo()
        add(info, _xmp_packet(o).decode())
        cases["png_metadata"].append(out / f"{name}{o}.png")
        Image.fromarray(_scene(rng, 23, 41)).save(cases["png_metadata"][-1], pnginfo=info)
    for magic, shape in (("P5", (29, 37)), ("P6", (29, 37, 3))):
        for maxval in (1, 15, 100, 254, 256, 1023, 4095, 65535):
            values = rng.integers(0, maxval + 1, shape)
            values.flat[:5] = maxval  # the top value, and one above it (clamped by Pillow)
            values.flat[5] = min(maxval + 1, 255 if maxval < 256 else 65535)
            cases["pnm"].append(_pnm(out / f"{magic}_max{maxval}.{'pgm' if magic == 'P5' else 'ppm'}", magic,
                                     values, maxval, comment=maxval == 100))
    for magic, shape, maxval in (("P2", (23, 31), 255), ("P2", (23, 31), 1000), ("P3", (23, 31, 3), 15)):
        values = rng.integers(0, maxval + 1, shape)
        values.flat[0] = maxval
        tokens = [str(v) for v in values.ravel()]
        tokens[7] += "\n# a comment inside the data\n"
        lines = "\n".join(" ".join(tokens[i:i + 17]) for i in range(0, len(tokens), 17))
        path = out / f"{magic}_plain_max{maxval}.{'pgm' if magic == 'P2' else 'ppm'}"
        path.write_text(f"{magic}\n# plain text\n{shape[1]} {shape[0]}\n{maxval}\n{lines}\n")
        cases["pnm"].append(path)
    bits = rng.integers(0, 2, (21, 29)).astype(np.uint8)
    cases["pnm"].append(out / "bitmap_plain.pbm")
    rows = ["".join(map(str, r[:10])) + " " + " ".join(map(str, r[10:])) for r in bits]  # spaces are optional
    cases["pnm"][-1].write_text("P1\n29 21\n" + "\n".join(rows) + "\n")
    cases["pnm"].append(out / "bitmap.pbm")
    cases["pnm"][-1].write_bytes(b"P4\n29 21\n" + np.packbits(bits, axis=1).tobytes())
    small = rng.integers(0, 200, (27, 35))  # maxval 65535 and every value <= 255: nfdseg scales by 255
    cases["pnm"].append(_pnm(out / "P5_max65535_dark.pgm", "P5", small, 65535))
    bgra = np.dstack([_scene(rng, 33, 27), rng.integers(0, 256, (27, 33), dtype=np.uint8)])
    cases["bmp32"].append(out / "bgrx32.bmp")
    Image.fromarray(bgra, "RGBA").save(cases["bmp32"][-1])  # Pillow writes RGBA as 32-bit BI_RGB
    for name, cut in (("no_iend", 12), ("no_iend_no_crc", 16), ("no_iend_half_adler", 18)):
        buf = io.BytesIO()
        Image.fromarray(_scene(rng, 31, 26)).save(buf, format="PNG")
        data = buf.getvalue()
        assert data.endswith(b"IEND\xaeB`\x82") and zlib.crc32(b"IEND") == 0xAE426082
        cases["png_no_iend"].append(out / f"{name}.png")
        cases["png_no_iend"][-1].write_bytes(data[:-cut])
    return cases
