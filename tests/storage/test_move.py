"""Moving an install from SQLite + local files to PostgreSQL + an S3 store, as a user would:
the command line, then a service started on the new settings."""

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.archives import fashion_mnist_images, image_folder_entries, zip_bytes
from tests.storage.test_object_store import BUCKET, endpoint  # noqa: F401 (fixture)

pytestmark = pytest.mark.system


def test_an_install_moves_to_postgresql_and_object_storage_and_keeps_working(
    endpoint: str,  # noqa: F811
    postgres_database: str,
    make_client: Callable[..., TestClient],
    data_dir: Path,
    tmp_path: Path,
) -> None:
    old = make_client()
    archive = zip_bytes(image_folder_entries(fashion_mnist_images(8)))
    dataset = old.post("/v1/datasets", files={"file": ("g.zip", archive)}).json()
    before = old.post("/v1/rankings", json={"target_dataset_id": dataset["id"]}).json()
    sources = old.get("/v1/sources", params={"page_size": 200}).json()["items"]
    old.__exit__(None, None, None)  # the service is stopped while moving

    store_url = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    command = [sys.executable, "-m", "app.zoo", "move", "--database-url", postgres_database,
               "--store-url", store_url, "--s3-endpoint-url", endpoint]  # fmt: skip
    environment = {**os.environ, "P2L_DATA_DIR": str(data_dir)}
    moved = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout[: moved.stdout.rindex("}") + 1])
    assert report["artifacts_copied"] == len(sources) + 1  # the zoo and the dataset
    assert report["rows_copied"]["datasets"] == 1
    assert report["rows_copied"]["sources"] == len(sources)

    again = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert '"artifacts_copied": 0' in again.stdout  # re-running skips what is there

    new = make_client(
        database_url=postgres_database,
        store_url=store_url,
        s3_endpoint_url=endpoint,
        data_dir=tmp_path / "fresh-scratch",  # nothing local: everything comes from S3
    )
    assert new.get(f"/v1/datasets/{dataset['id']}").json()["num_images"] == 40
    assert len(new.get("/v1/sources", params={"page_size": 200}).json()["items"]) == len(sources)
    after = new.post("/v1/rankings", json={"target_dataset_id": dataset["id"]}).json()
    assert [r["source_id"] for r in after["results"]] == [r["source_id"] for r in before["results"]]
    form = {
        "architecture": sources[0]["architecture"],
        "num_classes": str(sources[0]["num_classes"]),
        "name": "after-move",
        "dataset_id": dataset["id"],
    }
    weights = new.get(f"/v1/sources/{sources[0]['id']}/weights").content
    # The copied sequences and constraints still work for new rows.
    registered = new.post("/v1/sources", data=form, files={"weights": ("w", weights)})
    assert registered.status_code == 201, registered.text
