"""Screenshots of every web-console page (docs/console-*.png), taken in headless Chromium.

Starts a fresh service over a temporary data dir (or uses --url), uploads the bundled
garments target, ranks the zoo, fine-tunes the top source while the job page watches, and
saves the zoo, dataset, job (mid-run) and model pages, 1280 px wide, full page:

    .venv/bin/python scripts/console_screenshots.py [--url http://127.0.0.1:8000] [--out docs]
"""

import argparse
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from app.zoo.bundled import bundled_target

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDTH = 1280


def garments_zip(path: Path) -> Path:
    """The bundled garments target's training part as a zip of class folders."""
    images, labels, names, is_test = bundled_target("fashion")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, (pixels, label) in enumerate(
            zip(images[~is_test], labels[~is_test], strict=True)
        ):
            buffer = io.BytesIO()
            Image.fromarray(np.asarray(pixels)).save(buffer, "PNG")
            archive.writestr(f"garments/{names[label]}/{index:04d}.png", buffer.getvalue())
    return path


@contextmanager
def service(work: Path) -> Iterator[str]:
    """A fresh service (with its job worker) on a free port; its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    env["P2L_DATA_DIR"] = str(work / "data")
    log = (work / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited; see {work / 'server.log'}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start within 120 s")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def shoot(page: Any, out: Path, name: str) -> None:
    """A full-page screenshot, 1280 px wide."""
    path = out / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def drive(url: str, archive: Path, out: Path) -> None:
    """Click through the console as a user would and screenshot each page."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.goto(f"{url}/")
        page.get_by_label("Archive").set_input_files(archive)
        page.get_by_label("Name").fill("garments")
        page.get_by_role("button", name="Upload").click()
        page.wait_for_url(re.compile(r"/console/datasets/"), timeout=120_000)

        # Two stages, as a user comparing sources would rank: P2L, then LogME over its top 3.
        page.get_by_label("Second stage").select_option("logme")
        page.get_by_role("button", name="Rank sources").click()
        page.wait_for_function(
            "() => document.getElementById('ranking-chart').naturalWidth > 0", timeout=60_000
        )
        page.wait_for_function(
            "() => document.getElementById('target-map').naturalWidth > 0", timeout=60_000
        )
        page.get_by_label("Source").select_option(index=2)  # the ranking's #1 (after best, race)
        page.get_by_label("Epochs", exact=True).fill("8")
        page.get_by_label("Auto budget per candidate (epochs)").fill("2")
        page.get_by_role("checkbox", name=re.compile("^Baseline")).check()
        shoot(page, out, "dataset")

        page.get_by_role("button", name="Start fine-tune").click()
        page.wait_for_url(re.compile(r"/console/jobs/"), timeout=60_000)
        # Mid-run: a few epochs done, the bar part-way, the table growing.
        page.wait_for_function(
            "() => document.querySelectorAll('#job-metrics tbody tr').length >= 6 || "
            "['succeeded', 'failed', 'cancelled']"
            ".includes(document.getElementById('job-status').textContent)",
            timeout=300_000,
        )
        shoot(page, out, "job")
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=600_000)
        print("job events:", page.evaluate("window.p2lJobEvents.length"), "received")

        page.get_by_role("link", name=re.compile("Open the model")).click()
        page.wait_for_url(re.compile(r"/console/models/"))
        page.wait_for_function(
            "() => document.getElementById('confusion-image').naturalWidth > 0 || "
            "document.querySelector('#confusion-table table') !== null"
        )
        page.wait_for_timeout(1500)  # thumbnails load one by one
        shoot(page, out, "model")

        page.goto(f"{url}/")
        page.wait_for_function(
            "() => document.getElementById('zoo-map').naturalWidth > 0", timeout=60_000
        )
        expect(page.locator("#models table")).to_be_visible()
        shoot(page, out, "zoo")
        browser.close()


def main() -> None:
    """Parse the options, start a service unless one is given, take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running service (default: start a fresh one)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="p2l-console-") as tmp:
        work = Path(tmp)
        archive = garments_zip(work / "garments.zip")
        if args.url:
            drive(args.url.rstrip("/"), archive, args.out)
        else:
            with service(work) as url:
                drive(url, archive, args.out)


if __name__ == "__main__":
    main()
