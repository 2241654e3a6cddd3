"""The web console in a real browser: Debian's headless Chromium, driven by Playwright, against
a real server with its job worker: upload, rank, fine-tune live, the model's report, API keys."""

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


@pytest.mark.system
def test_console_upload_rank_finetune_and_report(
    browser: Any, garments_zip: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with start_service(tmp_path) as service:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
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

        # Upload a real archive: the dataset page lists its classes.
        dataset_id = upload(page, garments_zip, "garments")
        expect(page.get_by_role("heading", name="garments", exact=True)).to_be_visible()
        classes = page.get_by_role("table", name="Classes and their image counts")
        expect(classes.locator("tbody tr")).to_have_count(5)
        expect(classes).to_contain_text("pullover")

        # Rank: the table and the chart; the top source is a garment source.
        page.get_by_role("button", name="Rank sources").click()
        ranking = page.get_by_role("table", name="Ranking")
        expect(ranking.locator("tbody tr").first).to_contain_text("fashion", timeout=30_000)
        page.wait_for_function("() => document.getElementById('ranking-chart').naturalWidth > 0")
        assert image_loaded(page, "#ranking-chart")

        # Fine-tune the ranking's top source, tiny: manual schedule, 2 epochs.
        source = page.get_by_label("Source")
        expect(source.locator("option")).not_to_have_count(2)
        assert source.locator("option").nth(1).get_attribute("value") == "race"
        source.select_option(index=2)  # "#1 ..." of the ranking, after "best" and "race"
        assert source.input_value() not in ("best", "race")
        page.get_by_role("radio", name=re.compile("^manual")).check()
        page.get_by_label("Epochs", exact=True).fill("2")
        page.get_by_role("button", name="Start fine-tune").click()
        page.wait_for_url(re.compile(rf"/console/jobs/{ID}$"), timeout=30_000)
        job_id = page.url.rsplit("/", 1)[1]

        # The job page follows the event stream to the end.
        status = page.locator("#job-status")
        expect(status).to_have_text("succeeded", timeout=180_000)
        bar = page.get_by_role("progressbar")
        assert bar.get_attribute("max") == "2" and bar.evaluate("b => b.value") == 2
        expect(page.locator("#job-epochs")).to_have_text("2 of 2")
        metrics = page.get_by_role("table", name="Per-epoch metrics")
        expect(metrics.locator("tbody tr")).to_have_count(2)
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
        page.goto(f"{service.url}/")
        expect(sources).to_contain_text("garments-finetuned", timeout=30_000)
        expect(page.locator("#datasets")).to_contain_text("garments")
        expect(page.locator("#models")).to_contain_text(model_id[:8])
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
    for kind in ("datasets", "jobs", "models"):
        assert client.get(f"/console/{kind}/{'0' * 32}").status_code == 200
        bad = client.get(f"/console/{kind}/not-an-id")
        assert bad.status_code == 404
        assert bad.headers["content-type"] == "application/problem+json"
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
