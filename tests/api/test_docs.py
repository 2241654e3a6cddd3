"""Swagger UI and ReDoc are served from local files and really render (headless Chromium)."""

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.servers import free_port, serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.api
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
    live = tmp_path_factory.mktemp("live")
    port = free_port()
    env = {**os.environ, "P2L_DATA_DIR": str(live / "data"), "P2L_PORT": str(port)}
    with serve(["-m", "app"], env, live / "server.log", port) as service:
        yield service.url


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


@pytest.mark.system
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_swagger_ui_and_redoc_render_in_chromium(live_server: str) -> None:
    assert httpx.get(f"{live_server}/v1/reference").json()["feature_dim"] > 0
    swagger = rendered_dom(f"{live_server}/docs")
    assert 'class="swagger-ui' in swagger
    assert "/v1/datasets" in swagger and "authorize" in swagger.lower()
    redoc = rendered_dom(f"{live_server}/redoc")
    assert "/v1/datasets" in redoc and "redoc-wrap" in redoc
