"""The Gradio demo: rendering helpers, a gradio_client test against a real server on 127.0.0.1, and a
real browser (Debian chromium driven by playwright) uploading an image."""

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nfdseg.demo.render import class_shares, legend_html, side_by_side

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def test_render_helpers():
    img = np.zeros((4, 6, 3), np.uint8)
    labels = np.array([[0, 1, 1, 1, 1, 1]] * 4, np.uint8)
    sbs = side_by_side(img, labels, [(0, 0, 0), (200, 0, 0)], alpha=1.0)
    assert sbs.shape == (4, 16, 3) and sbs[0, 11].tolist() == [200, 0, 0] and sbs[0, 6].tolist() == [255, 255, 255]
    shares = class_shares(labels, 3)
    np.testing.assert_allclose(shares, [100 / 6, 500 / 6, 0])
    html = legend_html(["bg", "car", "<x>"], [(0, 0, 0), (1, 2, 3), (4, 5, 6)], shares)
    assert html.index("car") < html.index("bg") and "&lt;x&gt;" in html and "83.3%" in html


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'nfdseg[demo]')")
    from nfdseg.demo import build_demo
    from nfdseg.serve import Segmenter

    seg = Segmenter(exported, backend="onnxruntime")
    demo = build_demo(seg, examples=[])
    demo.queue(default_concurrency_limit=16)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", seg
    demo.close()
    demo.nfdseg_batcher.close()


def _scene(tmp_path, name="scene.png", size=(96, 128)):
    from nfdseg.distill.data.synthetic import generate_scene

    p = tmp_path / name
    Image.fromarray(generate_scene(5, size)[0]).save(p)
    return p


def test_gradio_client_single_several_and_bad(server, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    url, seg = server
    client = gradio_client.Client(url, verbose=False)
    one = _scene(tmp_path)
    gallery, legend, status, downloads = client.predict(gradio_client.handle_file(str(one)), [], 0.5,
                                                        api_name="/segment")
    assert len(gallery) == 1
    shown = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    assert shown.shape[0] == 96 and shown.shape[1] == 128 * 2 + 4 and shown.std() > 5, "overlay is not blank"
    for name in seg.class_names:
        assert f"data-class='{name}'" in legend
    assert "1 image segmented" in status and "onnxruntime" in status
    labels = np.asarray(Image.open(downloads[0]))
    assert labels.shape == (96, 128) and labels.max() < len(seg.class_names)
    np.testing.assert_array_equal(labels, seg.predict(str(one)).labels)

    many = [gradio_client.handle_file(str(_scene(tmp_path, f"s{i}.png", (64 + 8 * i, 80)))) for i in range(3)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    gallery, legend, status, downloads = client.predict(None, many + [gradio_client.handle_file(str(bad))], 0.5,
                                                        api_name="/segment")
    assert len(gallery) == 3 and len(downloads) == 3
    assert "3 images segmented" in status and "broken.png" in status and "not a readable image" in status
    # the app keeps serving after a bad upload
    gallery, *_ = client.predict(gradio_client.handle_file(str(one)), [], 0.3, api_name="/segment")
    assert len(gallery) == 1


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_browser_upload_shows_overlay_and_legend(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    url, seg = server
    img = _scene(tmp_path, size=(192, 256))
    shots = Path(os.environ.get("NFDSEG_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url, wait_until="domcontentloaded")  # Gradio keeps connections open: no networkidle
        upload = page.locator("#nfd-image input[type=file]")
        upload.wait_for(state="attached", timeout=60_000)
        upload.set_input_files(str(img))
        page.locator("#nfd-gallery img").first.wait_for(state="visible", timeout=60_000)
        page.wait_for_function("document.querySelector('#nfd-status').innerText.includes('segmented')",
                               timeout=60_000)
        shown = page.locator("#nfd-gallery img").first
        src = shown.get_attribute("src")
        assert src
        legend_text = page.locator("#nfd-legend").inner_text()
        for name in seg.class_names:
            assert name in legend_text
        assert "%" in legend_text, "legend shows class shares"
        page.screenshot(path=str(shots / "demo.png"), full_page=True)
        png = shown.screenshot()
        browser.close()
    import io

    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)
    assert arr.std() > 10, "the overlay shown in the page is not blank"
