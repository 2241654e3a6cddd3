"""What a new user meets first: the command line's help, and a ranking over an empty zoo."""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.archives import fashion_mnist_images, image_folder_entries, zip_bytes

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_help_prints_usage_and_starts_nothing(tmp_path: Path) -> None:
    """`python -m app --help` used to start the server and create a data dir where it ran."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "P2L_PORT": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "app", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "usage: python -m app" in done.stdout and "--port" in done.stdout
    assert "P2L_" in done.stdout  # it says where the settings come from
    assert list(tmp_path.iterdir()) == []  # no models_store/ created


@pytest.mark.api
def test_ranking_an_empty_zoo_says_why_nothing_is_ranked(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(import_bundled_zoo=False)
    archive = zip_bytes(image_folder_entries(fashion_mnist_images(per_class=4)))
    upload = client.post("/v1/datasets", files={"file": ("target.zip", archive)})
    assert upload.status_code == 201, upload.text
    ranking = client.post("/v1/rankings", json={"target_dataset_id": upload.json()["id"]})
    assert ranking.status_code == 201, ranking.text
    body = ranking.json()
    assert body["results"] == []
    assert len(body["warnings"]) == 1 and "the zoo is empty" in body["warnings"][0]
    assert "POST /v1/sources" in body["warnings"][0]
    # A stored ranking tells the same when read back.
    again = client.get(f"/v1/rankings/{body['id']}").json()
    assert again["warnings"] == body["warnings"]
