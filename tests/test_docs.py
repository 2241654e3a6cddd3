"""Swagger UI and ReDoc are served from local files and really render (headless Chromium)."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_docs_pages_use_no_cdn(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets, page
        assert all(a.startswith("/static-offline-docs/") for a in assets), assets
        assert "cdn" not in html.lower() and "fonts.googleapis" not in html
        for asset in assets:
            assert client.get(asset).status_code == 200, asset


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service started as the README starts it (`python -m app`), on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "P2L_DATA_DIR": str(tmp_path_factory.mktemp("live")),
        "P2L_PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app"], env=env, cwd=Path(__file__).parents[1]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            pytest.fail("service did not start within 90 s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def rendered_dom(url: str) -> str:
    """The DOM of a page after its scripts ran, from headless Chromium with no network."""
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={Path(os.environ.get('TMPDIR', '/tmp'))}/p2l-chr",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_swagger_ui_and_redoc_render_in_chromium(live_server: str) -> None:
    assert httpx.get(f"{live_server}/v1/reference").json()["feature_dim"] > 0
    swagger = rendered_dom(f"{live_server}/docs")
    assert 'class="swagger-ui' in swagger
    assert "/v1/datasets" in swagger and "authorize" in swagger.lower()
    redoc = rendered_dom(f"{live_server}/redoc")
    assert "/v1/datasets" in redoc and "redoc-wrap" in redoc
