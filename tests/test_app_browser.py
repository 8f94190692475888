"""A real browser on the app: Debian's Chromium driven by Playwright loads the page,
uploads a Swedish clip, sees the transcript and takes a screenshot: into the test's temporary folder,
or to FOLDER/app.png with ``--figures-dir FOLDER`` (`make figures` passes img/: a test
run never writes into the repository).

`make setup` installs both (apt: chromium; pip: playwright). Playwright's own browser download
(`playwright install`) is never used: the test drives /usr/bin/chromium.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: run `make setup`")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed: run `make setup` (apt-get install chromium)", allow_module_level=True)

from helpers import SENTENCE, render_test_clip  # noqa: E402

from whisper_sv.common.metrics import wer_report  # noqa: E402
from whisper_sv.serving.app import AppConfig, build_app, launch  # noqa: E402

# Offline and quiet: no first-run UI, no network services, no QUIC; sandbox off for containers/root.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
def test_browser_uploads_a_clip_and_reads_the_transcript(tmp_path, figures_dir):
    from whisper_sv.serving.inference import pick_backend

    clip = render_test_clip(tmp_path)
    screenshot = (figures_dir or tmp_path) / "app.png"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = AppConfig(port=port)
    demo = build_app(cfg, transcriber=pick_backend("packaged:whisper-base"))
    _, url, _ = launch(demo, cfg, block=False)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 820})
                page.goto(url, wait_until="domcontentloaded", timeout=60_000)
                page.get_by_role("button", name="Transcribe").wait_for(timeout=60_000)
                page.get_by_label("Upload file").click()  # the audio box opens on the microphone
                with page.expect_file_chooser() as chooser:
                    page.get_by_text("Drop Audio Here").first.click()
                chooser.value.set_files(str(clip))
                page.wait_for_selector("audio, .waveform-container, [data-testid='waveform-Swedish speech']",
                                       state="attached", timeout=30_000)
                page.get_by_role("button", name="Transcribe").click()
                box = page.locator("#transcript textarea")
                page.wait_for_function("el => el.value.trim().length > 0", arg=box.element_handle(), timeout=120_000)
                text = box.input_value()
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            finally:
                browser.close()
    finally:
        demo.close()
    assert wer_report([SENTENCE], [text])["cer"] < 0.3, text
    assert screenshot.stat().st_size > 10_000
