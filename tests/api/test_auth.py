"""API keys: off by default; when set, state-changing routes need a valid X-API-Key."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.archives import fashion_mnist_images, image_folder_entries, zip_bytes

pytestmark = pytest.mark.api


def archive() -> dict[str, tuple[str, bytes]]:
    return {"file": ("d.zip", zip_bytes(image_folder_entries(fashion_mnist_images(2))))}


def test_open_by_default(client: TestClient) -> None:
    assert client.post("/v1/datasets", files=archive()).status_code == 201


def test_keys_guard_writes_but_not_reads(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_keys="alpha-key, beta-key")

    missing = client.post("/v1/datasets", files=archive())
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["detail"] == "X-API-Key header required"
    wrong = client.post("/v1/datasets", files=archive(), headers={"X-API-Key": "alpha-kez"})
    assert wrong.status_code == 401 and "invalid" in wrong.json()["detail"]

    created = client.post("/v1/datasets", files=archive(), headers={"X-API-Key": "beta-key"})
    assert created.status_code == 201
    dataset_id = created.json()["id"]

    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 200
    assert client.get("/v1/reference").status_code == 200
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 401
    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 200
    deleted = client.delete(f"/v1/datasets/{dataset_id}", headers={"X-API-Key": "alpha-key"})
    assert deleted.status_code == 204


def test_swagger_authorize_knows_the_header(make_client: Callable[..., TestClient]) -> None:
    spec = make_client(api_keys="k1").get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["APIKeyHeader"]
    assert scheme == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": scheme["description"],
    }
    assert spec["paths"]["/v1/datasets"]["post"]["security"] == [{"APIKeyHeader": []}]
    assert "security" not in spec["paths"]["/v1/datasets"]["get"]
    # Open reads say so whatever their route depends on (a use case's Context included).
    for path in ("/v1/calibration", "/v1/architectures", "/v1/jobs", "/v1/models"):
        assert "security" not in spec["paths"][path]["get"], path


def test_an_open_service_documents_no_key(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})
    assert all("security" not in op for ops in spec["paths"].values() for op in ops.values())
