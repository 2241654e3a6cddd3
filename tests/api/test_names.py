"""Names are handles (#26): a dataset, source or model is named by its id or its name, in
paths and in request bodies; a name is unique within its kind and project (a second one the
user asks for is refused with 409 and nothing is stored; one the service makes up is
numbered); models have names.

Users following both README sessions got two sources named `fashion-finetuned` that nothing
could tell apart, `p2l rank fashion` answered 404, and models had no names.
"""

import io
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.archives import fashion_mnist_images, image_folder_entries, zip_bytes
from tests.helpers import get_job, run_queued_jobs, start_job

pytestmark = pytest.mark.api

SOURCE = "fashion_9k"  # a bundled compact CNN source of garments
ADMIN = "names-admin-key"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("names") / "data"


@pytest.fixture(scope="module")
def service(data_dir: Path) -> Iterator[TestClient]:
    settings = Settings(_env_file=None, data_dir=data_dir, start_worker=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def garments_zip() -> bytes:
    return zip_bytes(image_folder_entries(fashion_mnist_images(per_class=10)))


def upload(client: TestClient, archive: bytes, name: str | None, filename: str = "g.zip") -> dict:
    """POST /v1/datasets; the status and the body."""
    data = {"name": name} if name is not None else {}
    response = client.post("/v1/datasets", files={"file": (filename, archive)}, data=data)
    return {"status": response.status_code, **response.json()}


def names_of(client: TestClient, kind: str) -> list[str]:
    items = client.get(f"/v1/{kind}", params={"page_size": 200}).json()["items"]
    return sorted(item["name"] for item in items)


def files_under(data_dir: Path) -> set[str]:
    return {str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file()}


def test_a_dataset_is_named_by_its_name_in_paths_and_bodies(
    service: TestClient, garments_zip: bytes
) -> None:
    dataset = upload(service, garments_zip, "tops-by-name")
    assert dataset["status"] == 201, dataset
    by_name = service.get("/v1/datasets/tops-by-name")
    assert by_name.status_code == 200 and by_name.json()["id"] == dataset["id"]
    ranking = service.post("/v1/rankings", json={"target_dataset_id": "tops-by-name"})
    assert ranking.status_code == 201, ranking.text
    # What is stored is the id: the ranking stays the dataset's if a name changes hands.
    assert ranking.json()["target_dataset_id"] == dataset["id"]
    listed = service.get("/v1/rankings", params={"target_dataset_id": "tops-by-name"}).json()
    assert [r["id"] for r in listed["items"]] == [ranking.json()["id"]]
    # The sources a ranking is limited to, by name too.
    only = service.post(
        "/v1/rankings", json={"target_dataset_id": "tops-by-name", "source_ids": [SOURCE]}
    )
    assert only.status_code == 201, only.text
    assert [r["name"] for r in only.json()["results"]] == [SOURCE]
    signature = service.get("/v1/datasets/tops-by-name/signature")
    assert signature.status_code == 200
    # A name no dataset has is a 404 that says what it looked for.
    missing = service.get("/v1/datasets/no-such-dataset")
    assert missing.status_code == 404
    assert "no dataset with id or name 'no-such-dataset'" in missing.json()["detail"]
    unknown = service.post("/v1/rankings", json={"target_dataset_id": "no-such-dataset"})
    assert unknown.status_code == 404, unknown.text


def test_a_second_dataset_of_a_name_is_refused_and_nothing_is_kept(
    service: TestClient, garments_zip: bytes, data_dir: Path
) -> None:
    first = upload(service, garments_zip, "shirts-once")
    assert first["status"] == 201, first
    before, files = names_of(service, "datasets"), files_under(data_dir)
    again = upload(service, garments_zip, "shirts-once")
    assert again["status"] == 409, again
    assert first["id"] in again["detail"] and again["dataset_id"] == first["id"]
    assert names_of(service, "datasets") == before and files_under(data_dir) == files
    # A name that reads as an id would shadow ids: refused; so is one that cannot be one path
    # segment (a / is decoded before routing: "a/signature" would name another route).
    looks_like_an_id = upload(service, garments_zip, "ab" * 16)
    assert looks_like_an_id["status"] == 422 and "reads as an id" in looks_like_an_id["detail"]
    for unusable in ("shirts-once/signature", "org/model", "..", "tab\there"):
        refused = upload(service, garments_zip, unusable)
        assert refused["status"] == 422 and "one path segment" in refused["detail"], refused
    assert names_of(service, "datasets") == before and files_under(data_dir) == files
    # A name the service takes from the file is numbered instead: the upload is never lost.
    from_file = [upload(service, garments_zip, None, "coats.zip") for _ in range(2)]
    from_file.append(upload(service, garments_zip, "", "coats.zip"))  # an empty name: none
    assert [d["name"] for d in from_file] == ["coats", "coats-2", "coats-3"]


def test_concurrent_uploads_named_after_one_file_are_all_stored_and_numbered(
    service: TestClient, garments_zip: bytes
) -> None:
    """Several uploads of shoes.zip at once pick their numbers together: the one whose
    number another took at its commit numbers again rather than fail (409)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        uploads = list(
            pool.map(lambda _: upload(service, garments_zip, None, "shoes.zip"), range(4))
        )
    assert [u["status"] for u in uploads] == [201] * 4, uploads
    assert sorted(u["name"] for u in uploads) == ["shoes", "shoes-2", "shoes-3", "shoes-4"]


def test_duplicate_and_reserved_source_names_are_refused(
    service: TestClient, garments_zip: bytes
) -> None:
    dataset = upload(service, garments_zip, "for-sources")["id"]
    weights = service.get(f"/v1/sources/{SOURCE}/weights")  # a source by name, too
    assert weights.status_code == 200

    def register(name: str) -> dict:
        response = service.post(
            "/v1/sources",
            files={"weights": ("w.safetensors", weights.content)},
            # The dataset by name as well: the source keeps its id.
            data={"architecture": "compact_cnn", "num_classes": "10", "name": name,
                  "dataset_id": "for-sources"},
        )  # fmt: skip
        return {"status": response.status_code, **response.json()}

    mine = register("my-garments")
    assert mine["status"] == 201 and mine["dataset_id"] == dataset, mine
    again = register("my-garments")
    assert again["status"] == 409 and again["source_id"] == mine["id"], again
    assert register(SOURCE)["status"] == 409  # the bundled zoo's names are taken too
    for reserved in ("best", "race"):
        refused = register(reserved)
        assert refused["status"] == 422 and "reserved" in refused["detail"], refused
    assert names_of(service, "sources").count("my-garments") == 1
    assert service.get("/v1/sources/my-garments").json()["id"] == mine["id"]


def test_models_have_names_and_are_named_by_them(
    service: TestClient, garments_zip: bytes, data_dir: Path
) -> None:
    dataset = upload(service, garments_zip, "dresses")["id"]

    def finetune(**body: object) -> dict:
        job = start_job(
            service, target_dataset_id="dresses", source_id=SOURCE, schedule="manual",
            epochs=1, patience=None, val_fraction=0.2, test_fraction=0, **body,
        )  # fmt: skip
        run_queued_jobs(service)
        done = get_job(service, job["id"])
        assert done["status"] == "succeeded", done
        assert done["params"]["target_dataset_id"] == dataset
        return dict(service.get(f"/v1/models/{done['model_id']}").json())

    # Named after target and source by default, numbered where the name is taken.
    first, second = finetune(), finetune()
    assert (first["name"], second["name"]) == (f"dresses-from-{SOURCE}", f"dresses-from-{SOURCE}-2")
    named = finetune(model_name="dress-classifier")
    assert named["name"] == "dress-classifier"
    # A name the user asks for that the project holds is refused before anything is queued.
    jobs_before = len(service.get("/v1/jobs", params={"page_size": 200}).json()["items"])
    taken = service.post(
        "/v1/finetunes",
        json={"target_dataset_id": dataset, "source_id": SOURCE, "model_name": "dress-classifier"},
    )
    assert taken.status_code == 409 and taken.json()["model_id"] == named["id"], taken.text
    assert len(service.get("/v1/jobs", params={"page_size": 200}).json()["items"]) == jobs_before
    # Every model route takes the name.
    assert service.get("/v1/models/dress-classifier").json()["id"] == named["id"]
    with zipfile.ZipFile(io.BytesIO(garments_zip)) as archive:
        image = archive.read(next(n for n in archive.namelist() if n.endswith(".png")))
    predicted = service.post(
        "/v1/models/dress-classifier/predict", files=[("files", ("a.png", image))]
    )
    assert predicted.status_code == 200, predicted.text
    # Registered as a source, a model keeps its name unless given another.
    registered = service.post("/v1/models/dress-classifier/register")
    assert registered.status_code == 201 and registered.json()["name"] == "dress-classifier"
    assert service.get("/v1/sources/dress-classifier").json()["id"] == registered.json()["id"]
    # A model may be called what no source may (best): its source is numbered, not refused.
    best = finetune(model_name="best")
    as_source = service.post(f"/v1/models/{best['id']}/register")
    assert as_source.status_code == 201 and as_source.json()["name"] == "best-2", as_source.text


def test_names_are_unique_per_project_and_a_projects_own_wins(
    make_client: Callable[..., TestClient], garments_zip: bytes
) -> None:
    client = make_client(api_keys=ADMIN)
    operator = {"X-API-Key": ADMIN}
    keys = {}
    for team in ("team-a", "team-b"):
        created = client.post("/v1/projects", json={"name": team}, headers=operator)
        assert created.status_code == 201, created.text
        key = client.post(
            f"/v1/projects/{team}/keys", json={"name": "k", "role": "member"}, headers=operator
        )
        keys[team] = {"X-API-Key": key.json()["key"]}
    ids = {}
    for team, headers in keys.items():
        response = client.post(
            "/v1/datasets", files={"file": ("g.zip", garments_zip)}, data={"name": "same"},
            headers=headers,
        )  # fmt: skip
        assert response.status_code == 201, response.text  # one name in two projects: fine
        ids[team] = response.json()["id"]
    for team, headers in keys.items():
        assert client.get("/v1/datasets/same", headers=headers).json()["id"] == ids[team]
