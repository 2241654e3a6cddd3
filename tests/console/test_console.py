"""The web console in a real browser: Debian's headless Chromium, driven by Playwright, against
a real server with its job worker: upload, rank, fine-tune live, the model's report, API keys."""

import base64
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.archives import bundled_target_images, image_folder_entries, zip_bytes
from tests.servers import Service, free_port, serve, uvicorn_args

CHROMIUM = Path(os.environ.get("P2L_TEST_CHROMIUM", "/usr/bin/chromium"))
# Headless, and nothing that reaches the network on its own (the machine is offline).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "console-test-key"
ID = r"[0-9a-f]{32}"


def _unavailable(reason: str) -> None:
    """Fail in CI (which installs Chromium for this test), skip elsewhere."""
    message = f"the console test needs headless Chromium: {reason}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (Playwright's own browsers are never downloaded)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def start_service(tmp_path: Path, **env: str) -> AbstractContextManager[Service]:
    """A real server (uvicorn, its own job worker) over a fresh data dir."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    environment.update({"P2L_DATA_DIR": str(tmp_path / "data"), **env})
    port = free_port()
    return serve(uvicorn_args(port), environment, tmp_path / "server.log", port, timeout=120)


@pytest.fixture(scope="module")
def garments_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled garments target's training part (5 classes, 50 images each) as a zip."""
    path = tmp_path_factory.mktemp("archives") / "garments.zip"
    path.write_bytes(zip_bytes(image_folder_entries(bundled_target_images("fashion"))))
    return path


# Every frame, every <img> the page shows must hold a decoded picture: an <img> shown before
# its blob has loaded is an empty frame or a broken-image icon. What was shown too early is
# kept in sessionStorage, so it outlives the tab's navigations.
WATCH_IMAGES = """
(() => {
  const KEY = 'p2l.test.imagesShownEarly';
  const check = () => {
    try {
      for (const img of document.images) {
        const shown = img.getClientRects().length > 0;
        if (shown && !(img.complete && img.naturalWidth > 0)) {
          const seen = JSON.parse(sessionStorage.getItem(KEY) || '[]');
          const name = `${location.pathname} ${img.id || img.alt}`;
          if (!seen.includes(name)) sessionStorage.setItem(KEY, JSON.stringify([...seen, name]));
        }
      }
    } catch (_) { /* about:blank has no storage */ }
  };
  const frame = () => { check(); requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  setInterval(check, 5);
})();
"""


def images_shown_early(page: Any) -> list[str]:
    """The <img>s (page path and id or alt) shown before their picture had loaded."""
    return list(
        page.evaluate("JSON.parse(sessionStorage.getItem('p2l.test.imagesShownEarly') || '[]')")
    )


def image_loaded(page: Any, selector: str) -> bool:
    """True once the <img> shows a decoded image (fetched with the key, from a blob: URL)."""
    return bool(
        page.eval_on_selector(
            selector, "img => img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0"
        )
    )


def upload(page: Any, archive: Path, name: str) -> str:
    """Upload through the zoo page's form; the console moves to the dataset's page."""
    page.get_by_label("Archive").set_input_files(archive)
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(re.compile(rf"/console/datasets/{ID}$"), timeout=60_000)
    return page.url.rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def garments_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images as a folder (garments/<class>/NNNN.png), with hidden files a desktop
    leaves behind, which the console must not upload."""
    top = tmp_path_factory.mktemp("folders") / "garments"
    for path, data in image_folder_entries(bundled_target_images("fashion")).items():
        (top / path).parent.mkdir(parents=True, exist_ok=True)
        (top / path).write_bytes(data)
    (top / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (top / "pullover" / "._0000.png").write_bytes(b"not an image")
    return top


def start_finetune(
    page: Any, source_option: int | None, epochs: int, baseline: bool, model_name: str = ""
) -> str:
    """Fill the dataset page's form (manual schedule; the source as chosen, or the option
    at `source_option`; the model's name, if given), wait for its estimate, start; the
    job's id."""
    from playwright.sync_api import expect

    source = page.get_by_label("Source")
    if source_option is not None:
        source.select_option(index=source_option)
    page.get_by_label(re.compile("^Model name")).fill(model_name)
    page.get_by_role("radio", name=re.compile("^manual")).check()
    page.get_by_label("Epochs", exact=True).fill(str(epochs))
    page.get_by_role("checkbox", name=re.compile("^Baseline")).set_checked(baseline)
    # The estimate of exactly this request, before anything starts.
    estimate = page.locator("#finetune-estimate")
    expect(estimate).to_contain_text("Expected run time", timeout=30_000)
    expect(estimate).to_contain_text(f"{2 * epochs if baseline else epochs} epochs at most")
    page.get_by_role("button", name="Start fine-tune").click()
    page.wait_for_url(re.compile(rf"/console/jobs/{ID}$"), timeout=30_000)
    return str(page.url.rsplit("/", 1)[1])


@pytest.mark.system
def test_console_upload_rank_finetune_and_report(
    browser: Any, garments_folder: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with start_service(tmp_path) as service:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.add_init_script(WATCH_IMAGES)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        # The zoo: every bundled source listed, the map drawn.
        page.goto(f"{service.url}/")
        expect(page.get_by_role("heading", name="Source zoo and datasets")).to_be_visible()
        sources = page.get_by_role("table", name="Sources in the zoo")
        expect(sources.locator("tbody tr")).to_have_count(21, timeout=30_000)
        expect(sources).to_contain_text("fashion_tops_2700")
        page.wait_for_function("() => document.getElementById('zoo-map').naturalWidth > 0")
        assert image_loaded(page, "#zoo-map")

        # Upload a folder (zipped in the browser, hidden files left out): the dataset page
        # lists its classes.
        page.get_by_label("Folder").set_input_files(garments_folder)
        expect(page.locator("#drop-chosen")).to_contain_text(
            "Folder garments: 250 file(s) in 5 class folder(s)"
        )
        page.get_by_role("button", name="Upload").click()
        page.wait_for_url(re.compile(rf"/console/datasets/{ID}$"), timeout=60_000)
        dataset_id = page.url.rsplit("/", 1)[1]
        expect(page.get_by_role("heading", name="garments", exact=True)).to_be_visible()
        classes = page.get_by_role("table", name="Classes and their image counts")
        expect(classes.locator("tbody tr")).to_have_count(5)
        expect(classes).to_contain_text("pullover")
        expect(page.locator("#upload-report")).to_be_empty()  # no hidden file went up

        # Nothing is chosen before a ranking ("best" is no silent default): no estimate.
        source = page.get_by_label("Source")
        assert source.input_value() == ""
        expect(page.locator("#finetune-estimate")).to_contain_text("Choose a source")
        # The ranking comes first on the page, the form after it.
        assert (
            page.locator("#ranking-title").bounding_box()["y"]
            < (page.locator("#finetune-title").bounding_box()["y"])
        )

        # Rank: the table and the chart; the top source is a garment source, and the form
        # lists the ranked sources with the top one chosen.
        page.get_by_role("button", name="Rank sources").click()
        ranking = page.get_by_role("table", name="Ranking")
        expect(ranking.locator("tbody tr").first).to_contain_text("fashion", timeout=30_000)
        page.wait_for_function("() => document.getElementById('ranking-chart').naturalWidth > 0")
        assert image_loaded(page, "#ranking-chart")
        top = ranking.locator("tbody tr").first.get_by_role("link")
        top_name, top_href = top.inner_text(), top.get_attribute("href") or ""
        top_id = top_href.rsplit("/", 1)[1]
        assert top_href == f"/console/sources/{top_id}"
        expect(source).to_have_value(top_id)
        assert source.locator("option:checked").inner_text().startswith(f"#1 {top_name}")
        # How well the zoo covers the target, and the expected gain of the top 3.
        expect(page.locator("#rank-coverage")).to_contain_text("The zoo covers this target")
        header = [c.inner_text() for c in ranking.locator("thead th").all()]
        gains = ranking.locator("tbody tr td").nth(header.index("Expected gain over scratch"))
        expect(gains).to_contain_text(re.compile(r"^[+-]\d+\.\d points \["))

        # Fine-tune the ranking's top source, tiny: manual schedule, 2 epochs, and the
        # from-scratch baseline (2 epochs more) for its curve.
        job_id = start_finetune(page, None, epochs=2, baseline=True, model_name="garments-v1")

        # The job page follows the event stream to the end, drawing the curves.
        status = page.locator("#job-status")
        expect(status).to_have_text("succeeded", timeout=180_000)
        bar = page.get_by_role("progressbar")
        assert bar.get_attribute("max") == "4" and bar.evaluate("b => b.value") == 4
        expect(page.locator("#job-epochs")).to_have_text("4 of 4")
        metrics = page.get_by_role("table", name="Per-epoch metrics")
        expect(metrics.locator("tbody tr")).to_have_count(4)
        job_curves = page.locator("#job-curves")
        expect(
            job_curves.get_by_role("img", name=re.compile("^Accuracy per epoch"))
        ).to_be_visible()
        for series in ("fine_tune:val_accuracy", "baseline:val_accuracy", "fine_tune:train_loss"):
            expect(job_curves.locator(f'[data-series="{series}"] circle')).to_have_count(2)
        events = page.evaluate("window.p2lJobEvents")
        assert events[0] == "job" and events[-1] == "end", events
        # Epochs came one by one from the stream (the table grew), not only with the end.
        assert "epoch" in events and "status" in events, events
        # The live view changed while the job ran, not only at its end.
        assert int(page.locator("#job-live").get_attribute("data-updates") or 0) >= 1, events
        expect(page.get_by_role("button", name="Cancel job")).to_be_disabled()

        # The model's report.
        page.get_by_role("link", name=re.compile("Open the model")).click()
        page.wait_for_url(re.compile(rf"/console/models/{ID}$"))
        model_id = page.url.rsplit("/", 1)[1]
        expect(page.locator("#model-title")).to_contain_text("garments-v1")  # its name
        summary = page.locator("#model-summary")
        expect(summary).to_contain_text("Test accuracy")
        expect(summary).to_contain_text(re.compile(r"\d+\.\d %"))
        target = summary.get_by_role("link", name="garments")
        expect(target).to_have_attribute("href", f"/console/datasets/{dataset_id}")
        expect(summary.get_by_role("link", name=job_id[:8])).to_be_visible()
        per_class = page.get_by_role("table", name="Per-class precision, recall and F1")
        expect(per_class.locator("tbody tr")).to_have_count(5)
        expect(per_class).to_contain_text("pullover")
        page.wait_for_function("() => document.getElementById('confusion-image').naturalWidth > 0")
        assert image_loaded(page, "#confusion-image")
        # After 2 epochs some test images are wrong: their thumbnails, fetched one by one.
        expect(page.locator("#mis-note")).to_contain_text("misclassified")
        page.wait_for_function(
            "() => { const img = document.querySelector('#misclassified img');"
            " return img !== null && img.naturalWidth > 0; }"
        )
        expect(page.locator("#misclassified figure").first).to_contain_text("→")

        # Its curves, the baseline's overlaid (from the report).
        model_curves = page.locator("#model-curves")
        for series in ("fine_tune:val_accuracy", "baseline:val_accuracy", "baseline:train_loss"):
            expect(model_curves.locator(f'[data-series="{series}"] circle')).to_have_count(2)
        expect(model_curves.locator(".legend")).to_contain_text("from scratch")

        # Try it: two images of the folder, classified with their top labels.
        page.locator("#try-files").set_input_files(
            [garments_folder / "pullover" / "0001.png", garments_folder / "dress" / "0002.png"]
        )
        tried = page.locator("#try-results figure")
        expect(tried).to_have_count(2, timeout=30_000)
        expect(tried.first.locator(".top-labels li")).to_have_count(3)
        expect(tried.first).to_contain_text("0001.png")
        expect(tried.first.locator(".top-labels li").first).to_contain_text(
            re.compile(r"\d+\.\d %")
        )
        labels = tried.first.locator(".top-labels .label").all_inner_texts()
        assert len(labels) == 3 and set(labels) <= {"coat", "dress", "pullover", "shirt", "tshirt"}
        page.wait_for_function(
            "() => [...document.querySelectorAll('#try-results img')]"
            ".every(img => !img.hidden && img.naturalWidth > 0)"
        )

        # Download the weights (fetched with the key, saved under the server's name).
        with page.expect_download() as download:
            page.get_by_role("button", name="Download weights").click()
        assert download.value.suggested_filename == f"model-{model_id}.safetensors"
        assert Path(download.value.path()).stat().st_size > 10_000
        with page.expect_download(timeout=120_000) as exported:
            page.get_by_role("button", name="Export ONNX").click()
        assert exported.value.suggested_filename == f"model-{model_id}-onnx.zip"
        with zipfile.ZipFile(exported.value.path()) as archive:
            assert {"model.onnx", "preprocessing.json"} <= set(archive.namelist())
        expect(page.locator("#download-status")).to_contain_text("Downloaded")

        # Register it as a source; the zoo lists it.
        page.get_by_label("Source name").fill("garments-finetuned")
        page.get_by_role("button", name="Register as source").click()
        expect(page.locator("#register-status")).to_contain_text("Registered as source")
        expect(page.get_by_role("button", name="Register as source")).to_be_disabled()

        # The source's page, from the model's summary: its data, and where it ranked.
        summary.get_by_role("link", name=top_name).click()
        page.wait_for_url(f"{service.url}/console/sources/{top_id}")
        expect(page.get_by_role("heading", name=top_name, exact=True)).to_be_visible()
        expect(page.locator("#source-lineage")).to_contain_text("bundled")
        expect(page.get_by_role("table", name=re.compile("training data"))).to_be_visible()
        ranked = page.get_by_role("table", name="Rankings this source appears in")
        expect(ranked.locator("tbody tr")).to_have_count(1)
        expect(ranked.locator("tbody tr").first).to_contain_text("garments")
        expect(ranked.locator("tbody tr").first).to_contain_text("#1")

        # A second fine-tune (the ranking's #2, shown again on a later visit), to compare.
        page.goto(f"{service.url}/console/datasets/{dataset_id}")
        expect(source).to_have_value(top_id, timeout=30_000)
        second_id = start_finetune(page, 1, epochs=2, baseline=False)  # option 0: #1
        expect(status).to_have_text("succeeded", timeout=180_000)
        page.goto(f"{service.url}/console/datasets/{dataset_id}")
        picks = page.get_by_role("checkbox", name=re.compile("^Compare the job"))
        expect(picks).to_have_count(2, timeout=30_000)
        compare = page.get_by_role("button", name=re.compile("^Compare"))
        picks.first.check()
        expect(compare).to_be_disabled()
        picks.nth(1).check()
        compare.click()
        page.wait_for_url(re.compile(r"/console/compare\?jobs="))
        side = page.get_by_role("table", name="Jobs side by side")
        for job in (job_id, second_id):
            expect(side.locator("thead")).to_contain_text(job[:8])
            expect(
                page.locator(f'#compare-curves [data-series="{job}:val_accuracy"] circle')
            ).to_have_count(2)
        expect(side).to_contain_text("Test accuracy")
        expect(side).to_contain_text(top_name)

        # Ranked by the learned ranker: what it learned from, and P2L's rank beside its own.
        page.goto(f"{service.url}/console/datasets/{dataset_id}")
        page.get_by_label("Method").select_option("learned")
        page.get_by_role("button", name="Rank sources").click()
        expect(page.locator("#rank-status")).to_contain_text("ranked by learned", timeout=30_000)
        expect(page.locator("#rank-coverage")).to_contain_text(re.compile(r"Learned from \d+ past"))
        expect(ranking.locator("thead")).to_contain_text("P2L rank")

        page.goto(f"{service.url}/")
        expect(sources).to_contain_text("garments-finetuned", timeout=30_000)
        expect(page.locator("#datasets")).to_contain_text("garments")
        # Models go by name (the one the form gave), linked by id.
        model_link = page.locator(f'#models a[href="/console/models/{model_id}"]')
        expect(model_link).to_have_text("garments-v1")
        page.wait_for_function("() => document.getElementById('zoo-map').naturalWidth > 0")
        assert images_shown_early(page) == []
        assert not errors, errors


@pytest.mark.system
def test_console_asks_for_the_api_key(browser: Any, garments_zip: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # Every /v1 route needs the key: lists, images and uploads all go through it.
    with start_service(tmp_path, P2L_API_KEYS=KEY) as service:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{service.url}/")
        key = page.get_by_label("API key", exact=True)
        expect(key).to_be_visible()
        expect(page.locator("#content")).to_be_hidden()

        key.fill("not-the-key")
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#key-error")).to_contain_text("refused")
        expect(key).to_be_visible()

        key.fill(KEY)
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#key-panel")).to_be_hidden()
        # A P2L_API_KEYS key is an operator of the default project: nothing is hidden.
        expect(page.locator("#who")).to_contain_text("project default")
        expect(page.locator("#who-role")).to_have_text("operator")
        expect(page.locator(".role-note")).to_have_count(0)
        sources = page.get_by_role("table", name="Sources in the zoo")
        expect(sources.locator("tbody tr")).to_have_count(21, timeout=30_000)
        page.wait_for_function("() => document.getElementById('zoo-map').naturalWidth > 0")
        assert image_loaded(page, "#zoo-map")

        # An archive dropped on the upload box is taken as it is (not zipped again).
        page.locator("#drop-zone").evaluate(
            """(zone, b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const dataTransfer = new DataTransfer();
                dataTransfer.items.add(new File([bytes], "garments.zip"));
                zone.dispatchEvent(new DragEvent("drop", { dataTransfer, bubbles: true }));
            }""",
            base64.b64encode(garments_zip.read_bytes()).decode(),
        )
        expect(page.locator("#drop-chosen")).to_contain_text("Archive garments.zip")

        # The key stays for the tab: the upload (a POST) and the next page use it.
        upload(page, garments_zip, "garments")
        expect(page.get_by_role("table", name="Classes and their image counts")).to_be_visible()
        expect(page.locator("#key-panel")).to_be_hidden()
        page.get_by_role("button", name="Rank sources").click()
        expect(page.get_by_role("table", name="Ranking").locator("tbody tr").first).to_be_visible(
            timeout=30_000
        )
        page.wait_for_function("() => document.getElementById('ranking-chart').naturalWidth > 0")

        # The event stream needs the key too: fetch sends it (EventSource could not).
        page.get_by_role("radio", name=re.compile("^manual")).check()
        page.get_by_label("Epochs", exact=True).fill("1")
        page.get_by_role("button", name="Start fine-tune").click()
        page.wait_for_url(re.compile(rf"/console/jobs/{ID}$"), timeout=30_000)
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=180_000)
        # The status event shows "succeeded" a moment before the stream's last event arrives.
        page.wait_for_function("() => window.p2lJobEvents.includes('end')", timeout=30_000)
        assert page.evaluate("window.p2lJobEvents")[-1] == "end"
        expect(page.get_by_role("link", name=re.compile("Open the model"))).to_be_visible()

        # Forgetting the key asks again.
        page.get_by_role("button", name="Forget key").click()
        expect(page.get_by_label("API key", exact=True)).to_be_visible()


@pytest.mark.api
def test_console_pages_are_html_outside_the_schema(client: TestClient) -> None:
    """Without a browser: the pages render, bad ids are a 404, the schema does not list them."""
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/console/static/console.js' in page.text
    assert 'data-keys-required="false"' in page.text
    for path in ("console.js", "console.css"):
        assert client.get(f"/console/static/{path}").status_code == 200
    for kind in ("datasets", "jobs", "models", "sources"):
        assert client.get(f"/console/{kind}/{'0' * 32}").status_code == 200
        bad = client.get(f"/console/{kind}/not-an-id")
        assert bad.status_code == 404
        assert bad.headers["content-type"] == "application/problem+json"
    compare = client.get("/console/compare", params={"jobs": f"{'0' * 32},{'1' * 32}"})
    assert compare.status_code == 200 and 'data-page="compare"' in compare.text
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/console")]


@pytest.mark.api
def test_console_says_when_keys_are_needed(make_client: Callable[..., TestClient]) -> None:
    """The page tells its script that keys are set: by P2L_API_KEYS, or a key in the database."""
    page = make_client(api_keys=[KEY]).get("/")
    assert page.status_code == 200  # the shell itself needs no key; every /v1 call does
    assert 'data-keys-required="true"' in page.text and "data-open-reads" not in page.text
    assert KEY not in page.text and 'id="who"' in page.text


@pytest.mark.api
def test_console_needs_a_key_once_the_database_holds_one(client: TestClient) -> None:
    """An open service (no keys) stops being open when its first key is made, for good."""
    assert 'data-keys-required="false"' in client.get("/").text
    project = client.post("/v1/projects", json={"name": "team"}).json()
    made = client.post(f"/v1/projects/{project['id']}/keys", json={"role": "admin", "name": "a"})
    assert made.status_code == 201, made.text
    page = client.get("/")
    assert 'data-keys-required="true"' in page.text and made.json()["key"] not in page.text
    revoked = client.delete(
        f"/v1/projects/{project['id']}/keys/{made.json()['id']}",
        headers={"X-API-Key": made.json()["key"]},
    )
    assert revoked.status_code == 204
    # With no live key left it stays closed: revoking the last key never reopens a service.
    assert 'data-keys-required="true"' in client.get("/").text


@pytest.mark.system
def test_console_shows_a_viewers_project_and_role_and_hides_what_it_cannot_do(
    browser: Any, garments_zip: Path, tmp_path: Path
) -> None:
    """A viewer key of a project: its name and role in the top bar; no upload, rank,
    fine-tune or cancel forms, a note instead; reading still works."""
    import httpx
    from playwright.sync_api import expect

    env = {"P2L_API_KEYS": KEY, "P2L_START_WORKER": "false", "P2L_IMPORT_BUNDLED_ZOO": "false"}
    headers = {"X-API-Key": KEY}
    with (
        start_service(tmp_path, **env) as service,
        httpx.Client(base_url=service.url, headers=headers, timeout=60) as api,
    ):
        project = api.post("/v1/projects", json={"name": "team-view"}).json()
        made = api.post(
            f"/v1/projects/{project['id']}/keys", json={"role": "viewer", "name": "read-only"}
        )
        assert made.status_code == 201, made.text
        viewer = made.json()["key"]
        files = {"file": ("garments.zip", garments_zip.read_bytes())}
        uploaded = api.post("/v1/datasets", params={"project": "team-view"}, files=files)
        assert uploaded.status_code == 201, uploaded.text
        dataset = uploaded.json()
        # A job that stays queued (no worker): the viewer sees it, and no Cancel button.
        bundled = Path(__file__).resolve().parents[2] / "app" / "zoo" / "bundled" / "sources"
        source = api.post(
            "/v1/sources",
            params={"project": "team-view"},
            data={"architecture": "compact_cnn", "num_classes": "5", "name": "tops"},
            files={
                "weights": (
                    "w.safetensors",
                    (bundled / "fashion_tops_2700.safetensors").read_bytes(),
                ),
                "signature": (
                    "s.safetensors",
                    (bundled / "fashion_tops_2700.signature.safetensors").read_bytes(),
                ),
            },
        )
        assert source.status_code == 201, source.text
        body = {"target_dataset_id": dataset["id"], "source_id": source.json()["id"],
                "epochs": 1, "schedule": "manual"}  # fmt: skip
        job = api.post("/v1/finetunes", params={"project": "team-view"}, json=body)
        assert job.status_code == 202, job.text

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{service.url}/")
        page.get_by_label("API key", exact=True).fill(viewer)
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#who")).to_be_visible()
        expect(page.locator("#who-project")).to_have_text("team-view")
        expect(page.locator("#who-role")).to_have_text("viewer")
        expect(page.locator("#upload-form")).to_be_hidden()
        expect(page.get_by_role("button", name="Upload")).to_have_count(0)
        expect(page.locator(".role-note")).to_contain_text(
            "role (viewer) may not upload datasets: that needs member"
        )
        expect(page.locator("#datasets")).to_contain_text("garments")  # reads still work

        page.goto(f"{service.url}/console/datasets/{dataset['id']}")
        classes = page.get_by_role("table", name="Classes and their image counts")
        expect(classes.locator("tbody tr")).to_have_count(5)
        for form in ("#rank-form", "#finetune-form"):
            expect(page.locator(form)).to_be_hidden()
        expect(page.get_by_role("button", name="Start fine-tune")).to_have_count(0)
        expect(page.locator(".role-note")).to_have_count(2)
        expect(page.locator("#who-role")).to_have_text("viewer")

        page.goto(f"{service.url}/console/jobs/{job.json()['id']}")
        expect(page.locator("#job-status")).to_have_text("queued")
        expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
        expect(page.locator(".role-note")).to_contain_text("may not cancel jobs")
        assert not errors, errors


@pytest.mark.system
def test_console_keeps_following_a_long_queued_job(
    browser: Any, garments_zip: Path, tmp_path: Path
) -> None:
    """No worker: every event stream times out; after 20 the page polls until the job ends."""
    import httpx
    from playwright.sync_api import expect

    env = {"P2L_START_WORKER": "false", "P2L_EVENT_STREAM_IDLE_SECONDS": "0.3"}
    with start_service(tmp_path, **env) as service, httpx.Client(base_url=service.url) as api:
        files = {"file": ("garments.zip", garments_zip.read_bytes())}
        target = api.post("/v1/datasets", files=files, timeout=60).json()
        body = {"target_dataset_id": target["id"], "epochs": 1, "schedule": "manual"}
        job = api.post("/v1/finetunes", json=body, timeout=60).json()
        assert job["status"] == "queued", job

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{service.url}/console/jobs/{job['id']}")
        live = page.locator("#job-live")
        expect(live).to_contain_text("checking every 5 s", timeout=60_000)
        assert page.evaluate("window.p2lJobEvents").count("timeout") == 20
        expect(page.locator("#job-status")).to_have_text("queued")

        api.post(f"/v1/jobs/{job['id']}/cancel").raise_for_status()
        expect(page.locator("#job-status")).to_have_text("cancelled", timeout=15_000)
        assert not errors, errors
