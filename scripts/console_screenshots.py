"""Screenshots of every web-console page (docs/console-*.png), taken in headless Chromium.

Starts a fresh service over a temporary data dir (or uses --url), uploads the bundled
garments target as a folder (zipped in the browser), ranks the zoo, fine-tunes the top
source (with its baseline) while the job page watches and a second source for comparison,
tries the model on a few images, and saves the zoo, dataset, job (mid-run), model, try-it,
source and compare pages, 1280 px wide, full page (the try-it box alone):

    .venv/bin/python scripts/console_screenshots.py [--url http://127.0.0.1:8000] [--out docs]
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
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


def garments_folder(path: Path) -> Path:
    """The bundled garments target's training part as a folder of class folders, and a few
    of its held-out images (path/../try/) to try the model on."""
    images, labels, names, is_test = bundled_target("fashion")
    for index, (pixels, label) in enumerate(zip(images[~is_test], labels[~is_test], strict=True)):
        target = path / names[label] / f"{index:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(pixels)).save(target, "PNG")
    tries = path.parent / "try"
    tries.mkdir(exist_ok=True)
    for label in range(len(names)):
        first = int(np.flatnonzero(is_test & (labels == label))[0])
        Image.fromarray(np.asarray(images[first])).save(tries / f"{names[label]}.png", "PNG")
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


def drive(url: str, folder: Path, out: Path) -> None:
    """Click through the console as a user would and screenshot each page."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.goto(f"{url}/")
        page.get_by_label("Folder").set_input_files(folder)
        expect(page.locator("#drop-chosen")).to_contain_text("class folder(s)")
        page.get_by_role("button", name="Upload").click()
        page.wait_for_url(re.compile(r"/console/datasets/"), timeout=120_000)
        dataset_url = page.url

        # Two stages, as a user comparing sources would rank: P2L, then LogME over its top 3.
        page.get_by_label("Second stage").select_option("logme")
        page.get_by_role("button", name="Rank sources").click()
        page.wait_for_function(
            "() => document.getElementById('ranking-chart').naturalWidth > 0", timeout=60_000
        )
        page.wait_for_function(
            "() => document.getElementById('target-map').naturalWidth > 0", timeout=60_000
        )
        top = page.get_by_role("table", name="Ranking").locator("tbody tr").first
        source_url = url + (top.get_by_role("link").get_attribute("href") or "")
        page.get_by_label("Epochs", exact=True).fill("8")
        page.get_by_label("Auto budget per candidate (epochs)").fill("2")
        page.get_by_role("checkbox", name=re.compile("^Baseline")).check()
        expect(page.locator("#finetune-estimate")).to_contain_text(
            "Expected run time", timeout=60_000
        )
        page.wait_for_timeout(1500)  # the estimate of the last change (debounced)
        shoot(page, out, "dataset")

        page.get_by_role("button", name="Start fine-tune").click()
        page.wait_for_url(re.compile(r"/console/jobs/"), timeout=60_000)
        # Mid-run: the search done, the fine-tune part-way, the curves growing.
        page.wait_for_function(
            "() => document.querySelectorAll('#job-curves [data-series^=\"fine_tune:\"]')"
            ".length > 0 && document.querySelectorAll('#job-metrics tbody tr').length >= 16 || "
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
        page.locator("#try-files").set_input_files(sorted((folder.parent / "try").iterdir()))
        expect(page.locator("#try-results figure").first).to_be_visible(timeout=60_000)
        page.wait_for_timeout(1500)  # thumbnails load one by one
        shoot(page, out, "model")
        path = out / "console-try.png"
        page.locator("#try-title").locator("..").screenshot(path=str(path))
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")

        # A second fine-tune (the ranking's #2, manual) to compare with the first.
        page.goto(dataset_url)
        source = page.get_by_label("Source")
        expect(source.locator("option:checked")).to_contain_text("#1", timeout=60_000)
        source.select_option(index=1)
        page.get_by_role("radio", name=re.compile("^manual")).check()
        page.get_by_label("Epochs", exact=True).fill("8")
        page.get_by_role("button", name="Start fine-tune").click()
        page.wait_for_url(re.compile(r"/console/jobs/"), timeout=60_000)
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=600_000)
        page.goto(dataset_url)
        picks = page.get_by_role("checkbox", name=re.compile("^Compare the job"))
        expect(picks).to_have_count(2, timeout=60_000)
        picks.first.check()
        picks.nth(1).check()
        page.get_by_role("button", name=re.compile("^Compare")).click()
        page.wait_for_url(re.compile(r"/console/compare"))
        expect(page.locator("#compare-curves svg").first).to_be_visible(timeout=60_000)
        shoot(page, out, "compare")

        page.goto(source_url)
        expect(page.get_by_role("table", name="Rankings this source appears in")).to_be_visible(
            timeout=60_000
        )
        shoot(page, out, "source")

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
        folder = garments_folder(work / "garments")
        if args.url:
            drive(args.url.rstrip("/"), folder, args.out)
        else:
            with service(work) as url:
                drive(url, folder, args.out)


if __name__ == "__main__":
    main()
