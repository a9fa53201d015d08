"""The Gradio demo: rendering helpers, a gradio_client test against a real server on 127.0.0.1, and a
real browser (Debian chromium driven by playwright) uploading an image."""

import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefiles import quadrants
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
    yield f"http://127.0.0.1:{port}/", seg, demo
    demo.close()
    demo.nfdseg_close()


def _scene(tmp_path, name="scene.png", size=(96, 128)):
    from nfdseg.data.synthetic import generate_scene

    p = tmp_path / name
    Image.fromarray(generate_scene(5, size)[0]).save(p)
    return p


def test_gradio_client_single_several_and_bad(server, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    url, seg, demo = server
    client = gradio_client.Client(url, verbose=False)
    one = _scene(tmp_path)
    gallery, legend, status, downloads = client.predict(gradio_client.handle_file(str(one)), [], 0.5,
                                                        api_name="/segment")
    assert len(gallery) == 1
    shown = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    assert shown.shape[0] == 96 and shown.shape[1] == 128 * 2 + 4 and shown.std() > 5, "overlay is not blank"
    for name in seg.class_names:
        assert f"data-class='{name}'" in legend
    assert "1 image segmented" in status and seg.backend.name in status
    labels = np.asarray(Image.open(downloads[0]))
    assert labels.shape == (96, 128) and labels.max() < len(seg.class_names)
    np.testing.assert_array_equal(labels, seg.predict(str(one)).labels)

    many = [gradio_client.handle_file(str(_scene(tmp_path, f"s{i}.png", (64 + 8 * i, 80)))) for i in range(3)]
    bad = tmp_path / "holiday photo.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    gallery, legend, status, downloads = client.predict(None, many + [gradio_client.handle_file(str(bad))], 0.5,
                                                        api_name="/segment")
    assert len(gallery) == 3 and len(downloads) == 3
    assert "3 images segmented" in status and "holiday photo.png: not a readable image" in status, status
    # the message names the visitor's file, never where the server keeps uploads
    assert tempfile.gettempdir() not in status and "gradio" not in status and str(tmp_path) not in status
    # the same broken file in the main image box reaches the app's own message too (gr.Image would fail in Gradio)
    _, _, status, downloads = client.predict(gradio_client.handle_file(str(bad)), [], 0.5, api_name="/segment")
    assert "holiday photo.png: not a readable image" in status and downloads is None
    assert tempfile.gettempdir() not in status and "gradio" not in status
    # ...without a gr.Image subclass, for which Gradio would write a .pyi into the (maybe read-only) package
    import nfdseg.demo

    assert not list(Path(nfdseg.demo.__file__).parent.glob("*.pyi"))
    # the app keeps serving after a bad upload
    gallery, *_ = client.predict(gradio_client.handle_file(str(one)), [], 0.3, api_name="/segment")
    assert len(gallery) == 1


def test_rotated_phone_photo_and_result_files_per_visitor(server, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from imagefiles import rotated_jpeg

    url, seg, demo = server
    photo = tmp_path / "portrait.jpg"
    rotated_jpeg(quadrants(64, 32), 6, photo)  # stored 32 high, 64 wide; shown 64 high, 32 wide
    client = gradio_client.Client(url, verbose=False)
    gallery, _, status, downloads = client.predict(gradio_client.handle_file(str(photo)), [], 0.5, api_name="/segment")
    shown = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    assert shown.shape[:2] == (64, 32 * 2 + 4), "the photo is shown upright (EXIF orientation applied)"
    assert np.asarray(Image.open(downloads[0])).shape == (64, 32), "the label map has the upright size"
    files = demo.nfdseg_files
    (mine,) = [d for d in files.folders() if list(d.glob("portrait_0_labels.png"))]
    visitor = next(v for v, entries in files._dirs.items() if entries[-1][0] == mine)
    for i in range(2):  # two more requests: the first folder is replaced twice over, and removed
        client.predict(gradio_client.handle_file(str(_scene(tmp_path, f"next{i}.png"))), [], 0.5, api_name="/segment")
    kept = files.folders(visitor)
    assert not mine.exists() and len(kept) == 2, "only the newest two of a visitor's request folders are kept"
    assert list(kept[-1].glob("next1_0_labels.png")) and list(kept[0].glob("next0_0_labels.png"))
    # closing the page fires Gradio's unload event, wired to remove that visitor's files
    unload = [fn for fn in demo.fns.values() if any(t[1] == "unload" for t in fn.targets)]
    assert len(unload) == 1
    unload[0].fn(type("Request", (), {"session_hash": visitor})())
    assert files.folders(visitor) == [] and not any(d.exists() for d in kept)


def test_result_files_lifecycle(tmp_path):
    from nfdseg.demo.files import ResultFiles

    files = ResultFiles(max_age_s=3600, keep=2)
    a1 = files.for_request("a")
    (a1 / "x.png").write_bytes(b"x")
    b1 = files.for_request("b")
    a2 = files.for_request("a")
    assert a1.is_dir() and a2.is_dir(), "the folder just before is kept while a new request may overlap it"
    a3 = files.for_request("a")
    assert not a1.exists() and a2.is_dir() and a3.is_dir() and b1.is_dir(), "older ones go; other visitors stay"
    files.release("b")
    assert not b1.exists() and a3.is_dir()
    files.max_age_s = 0.0  # an idle visitor (no unload, e.g. an API client) is cleaned up by later requests
    c1 = files.for_request("c")
    assert not a2.exists() and not a3.exists() and c1.is_dir()
    root = files.root
    files.close()
    assert not root.exists()


def test_examples_come_from_the_models_own_data(exported, tmp_path):
    import dataclasses

    from nfdseg.demo.examples import example_images
    from nfdseg.data.synthetic import SyntheticScenes
    from nfdseg.serve import Segmenter

    manifest = Segmenter(exported, backend="onnxruntime").manifest
    paths, where = example_images(manifest, tmp_path / "ex", n=3)
    data = manifest.config["data"]
    scenes = SyntheticScenes(data["val_split"], data["synthetic_val"], tuple(data["synthetic_size"]), data["seed"])
    assert len(paths) == 3 and "synthetic validation scenes" in where
    picked = [int(Path(p).stem.split("_")[1]) for p in paths]
    assert picked[0] == 0 and picked[-1] == len(scenes) - 1 and 0 < picked[1] < len(scenes) - 1, "spread over val"
    for p, i in zip(paths, picked):
        shown = np.asarray(Image.open(p))
        k = shown.shape[0] // scenes.size[0]
        assert k >= 2 and np.array_equal(shown[::k, ::k], scenes.load(i)[0]), f"{p} is validation scene {i}"
    # a model trained on a folder dataset shows that dataset's validation images, in place
    root = tmp_path / "mine"
    names = list(manifest.classes.names)
    (root / "classes.yaml").parent.mkdir(parents=True)
    (root / "classes.yaml").write_text(f"classes: {names}\n")
    for i in range(5):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(root / f"v{i}.png")
        (root / "images/val").mkdir(parents=True, exist_ok=True)
        (root / "masks/val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(root / "images/val" / f"v{i}.png")
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "masks/val" / f"v{i}.png")
    folder_cfg = {**data, "format": "folder", "root": str(root)}
    folder_model = dataclasses.replace(manifest, config={**manifest.config, "data": folder_cfg})
    paths, where = example_images(folder_model, tmp_path / "ex2", n=3)
    assert [Path(p).name for p in paths] == ["v0.png", "v2.png", "v4.png"] and str(root) in where
    assert all(Path(p).parent == root / "images/val" for p in paths) and not (tmp_path / "ex2").exists()
    gone = dataclasses.replace(manifest, config={**manifest.config, "data": {**folder_cfg, "root": str(tmp_path / "x")}})
    paths, where = example_images(gone, tmp_path / "ex3")
    assert paths == [] and "not reachable" in where, "no synthetic scenes for a model of another world"
    (root / "classes.yaml").write_text("classes: [a, b]\n")
    assert example_images(folder_model, tmp_path / "ex4")[0] == []
    # the app itself: examples=None means the manifest's own data; its generated scenes go when the demo closes
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'nfdseg[demo]')")
    from nfdseg.demo import build_demo

    demo = build_demo(Segmenter(exported, backend="onnxruntime"))
    shown, where = demo.nfdseg_examples
    assert len(shown) == 4 and "synthetic validation scenes" in where
    assert all(Path(p).is_relative_to(demo.nfdseg_files.root) for p in shown)
    demo.nfdseg_close()
    assert not any(Path(p).exists() for p in shown)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_browser_upload_shows_overlay_and_legend(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    url, seg, _ = server
    img = _scene(tmp_path, size=(360, 480))  # CamVid's size: a wide street photo
    shots = Path(os.environ.get("NFDSEG_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
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
        page.wait_for_timeout(300)  # let the image settle at its laid-out size
        page.screenshot(path=str(shots / "demo.png"), full_page=True)
        png = shown.screenshot()
        box, img_box = page.locator("#nfd-gallery").bounding_box(), shown.bounding_box()
        rendered = page.evaluate("""() => { const i = document.querySelector('#nfd-gallery img');
            const r = i.getBoundingClientRect(), k = Math.min(r.width / i.naturalWidth, r.height / i.naturalHeight);
            return [i.naturalWidth * k, i.naturalHeight * k]; }""")
        browser.close()
    import io

    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)
    assert arr.std() > 10, "the overlay shown in the page is not blank"
    # the result fills its box: the picture as drawn (object-fit contain) is nearly as wide and as tall as the
    # gallery, no blank band above or beside it (Gradio's default square cell left 60 % of the box empty here)
    assert rendered[0] >= 0.95 * img_box["width"] and rendered[1] >= 0.95 * img_box["height"]
    assert img_box["width"] >= 0.95 * box["width"] - 24 and img_box["height"] >= box["height"] - 60, (box, img_box)


def test_the_page_says_how_the_served_model_was_trained():
    """The pipeline may ship the undistilled baseline: the demo must not call it an NFD student."""
    from types import SimpleNamespace

    from nfdseg.demo.render import model_origin

    def m(loss, choice=None):
        return SimpleNamespace(config={"distill": {"loss": loss}}, metrics={"student_choice": choice} if choice else {})

    assert "Normalized Feature Distillation" in model_origin(m("nfd"))
    base = model_origin(m("none", {"deployed": "baseline", "student_miou": 44.71, "baseline_miou": 46.97}))
    assert "without distillation" in base and "46.97 vs 44.71" in base and "Normalized" not in base
    assert "KD" in model_origin(m("kd")) and model_origin(SimpleNamespace(config={}, metrics={})) == "a segmentation model"


def test_video_tab_returns_the_overlay_video_with_latency(server, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    pytest.importorskip("av", reason="PyAV is not installed (pip install 'nfdseg[video]')")
    from videofiles import decoded, scene_frames, write_clip

    url, seg, demo = server
    clip = write_clip(tmp_path / "street clip.mp4", scene_frames(8))
    client = gradio_client.Client(url, verbose=False)
    video, status = client.predict(gradio_client.handle_file(str(clip)), 0.5, api_name="/segment_video")
    path = video["video"] if isinstance(video, dict) else video
    back = decoded(Path(path))
    assert len(back) == 8 and back[0].shape == (48, 64, 3)
    assert "street clip.mp4: 8 frames segmented" in status and "fps" in status and "infer" in status, status
    src = decoded(clip)
    from nfdseg.preprocess import overlay

    want = overlay(src[4], seg.predict(src[4]).labels, seg.palette, 0.5).astype(int)
    assert np.abs(back[4].astype(int) - want).mean() < 12, "the returned video is the overlay of the clip"
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    video, status = client.predict(gradio_client.handle_file(str(bad)), 0.5, api_name="/segment_video")
    assert video is None and "broken.mp4: not a readable video" in status and tempfile.gettempdir() not in status


def test_webcam_frame_handler_overlays_through_the_batcher(exported):
    from nfdseg.demo.files import ResultFiles
    from nfdseg.demo.handlers import DemoResources, StreamHandlers
    from nfdseg.preprocess import overlay
    from nfdseg.serve import MicroBatcher, Segmenter

    seg = Segmenter(exported, backend="onnxruntime")
    res = DemoResources(seg, MicroBatcher(seg), ResultFiles())
    try:
        frame = np.asarray(Image.open(_scene(Path(res.files.root), size=(48, 64))))
        shown, status = StreamHandlers(res).webcam_frame(frame, 0.4)
        np.testing.assert_array_equal(shown, overlay(frame, seg.predict(frame).labels, seg.palette, 0.4))
        assert "ms per frame" in status and res.batcher.stats["requests"] == 1
        assert StreamHandlers(res).webcam_frame(None, 0.4)[0] is None
    finally:
        res.close()


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_browser_webcam_tab_segments_a_fake_camera_live(server, tmp_path):
    """Chromium's fake camera plays a generated y4m clip; the webcam tab streams it and shows overlays live."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from videofiles import scene_frames, y4m

    url, seg, demo = server
    cam = y4m(tmp_path / "cam.y4m", scene_frames(20, size_hw=(240, 320)), fps=10)
    before = demo.nfdseg_batcher.stats["requests"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                                          "--use-fake-device-for-media-stream",
                                          f"--use-file-for-fake-video-capture={cam}"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("tab", name="Webcam").click()
        page.get_by_text("Click to Access Webcam").click(timeout=60_000)
        page.locator("#nfd-webcam button", has_text="Record").first.click(timeout=60_000)
        page.wait_for_function("document.querySelector('#nfd-cam-status').innerText.includes('ms per frame')",
                               timeout=60_000)
        page.wait_for_timeout(2000)  # keep streaming: several frames go through
        status = page.locator("#nfd-cam-status").inner_text()
        png = page.locator("#nfd-cam-out img").first.screenshot()
        browser.close()
    import io

    served = demo.nfdseg_batcher.stats["requests"] - before
    assert served >= 3, f"the stream sent frames one after another ({served} segmented)"
    assert "320×240" in status, status
    shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)
    assert shown.std() > 10, "the live overlay is not blank"
