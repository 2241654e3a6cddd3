"""Fixtures of the API tests."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The service's OpenAPI document (one service per module: it only reads it)."""
    data_dir = tmp_path_factory.mktemp("openapi") / "data"
    settings = Settings(_env_file=None, data_dir=data_dir, start_worker=False)
    with TestClient(create_app(settings)) as client:
        return dict(client.get("/openapi.json").json())
