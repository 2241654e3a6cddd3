"""Export bundles (#25): the zip carries predict.py, labels.txt and a model card beside the
model and preprocessing.json; the first export of a model in a format is stored with the
model (counted in its project's storage) and later ones are served from there; deleting the
model deletes them; predict.py reports an unreadable image and still classifies the rest.

The models are real (a bundled source fine-tuned for one epoch, run in this process as the
worker would); tests/finetune/test_export.py checks predict.py's answers against the
service's in a fresh venv."""

import io
import logging
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from app.config import Settings
from app.finetune.export import ASSETS, NO_LICENCE, bundle_files, bundle_version
from app.main import create_app
from app.models import FinetunedModel
from app.store import folder_bytes
from tests.archives import DATA
from tests.helpers import get_job, run_queued_jobs, start_job, upload_garments

pytestmark = pytest.mark.api

SOURCE = "fashion_9k"  # a bundled compact CNN source of garments


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export-api") / "data"


@pytest.fixture(scope="module")
def service(data_dir: Path) -> Iterator[TestClient]:
    settings = Settings(_env_file=None, data_dir=data_dir, start_worker=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def finetuned(client: TestClient, per_class: int, **options: object) -> dict:
    """A model: the bundled garments source fine-tuned one epoch on ``per_class`` garments."""
    dataset = upload_garments(client, per_class=per_class)
    sources = client.get("/v1/sources", params={"page_size": 200}).json()["items"]
    source = next(s for s in sources if s["name"] == SOURCE)
    job = start_job(
        client, target_dataset_id=dataset, source_id=source["id"], schedule="manual",
        epochs=1, patience=None, **options,
    )  # fmt: skip
    run_queued_jobs(client)
    done = get_job(client, job["id"])
    assert done["status"] == "succeeded", done
    return dict(client.get(f"/v1/models/{done['model_id']}").json())


@pytest.fixture(scope="module")
def model(service: TestClient) -> dict:
    """A model with a test split, a validation split and a from-scratch baseline."""
    return finetuned(service, per_class=10, baseline=True)


def export(client: TestClient, model_id: str, format: str) -> tuple[dict[str, bytes], str]:
    """The export's files by name (in zip order), and its ETag."""
    response = client.get(f"/v1/models/{model_id}/export", params={"format": format})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert f'filename="model-{model_id}-{format}.zip"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return files, response.headers["etag"]


def stored_bytes(data_dir: Path, model_id: str) -> int | None:
    """The model row's stored_bytes (what its project's storage quota counts)."""
    engine = create_engine(f"sqlite:///{data_dir / 'p2l.db'}")
    with engine.connect() as connection:
        value = connection.scalar(
            select(FinetunedModel.stored_bytes).where(FinetunedModel.id == model_id)
        )
    engine.dispose()
    return value


def usage(client: TestClient) -> int:
    response = client.get("/v1/projects/default/usage")
    assert response.status_code == 200, response.text
    return int(response.json()["storage_bytes"])


def test_an_export_holds_the_model_its_labels_card_and_script(
    service: TestClient, model: dict
) -> None:
    source = next(
        s for s in service.get("/v1/sources?page_size=200").json()["items"] if s["name"] == SOURCE
    )
    dataset = service.get(f"/v1/datasets/{model['target_dataset_id']}").json()
    report = model["report"]
    for format, model_file, requirements in (
        ("onnx", "model.onnx", "pip install onnxruntime numpy pillow"),
        ("torchscript", "model.pt", "pip install torch numpy pillow"),
    ):
        files, _ = export(service, model["id"], format)
        assert list(files) == bundle_files(format)  # type: ignore[arg-type]
        assert list(files) == [model_file, "preprocessing.json", "labels.txt", "predict.py",
                               "README.md"]  # fmt: skip
        assert files["labels.txt"].decode() == "".join(f"{c}\n" for c in model["class_names"])
        assert files["predict.py"] == (ASSETS / "predict.py").read_bytes()
        card = files["README.md"].decode()
        assert card.startswith(f"# Model {model['id']}\n")
        for fact in (
            f"| Id | `{source['id']}` |", f"| Name | {SOURCE} |",
            f"| Id | `{dataset['id']}` |", f"| Name | {dataset['name']} |",
            f"| Images | {dataset['num_images']} |", f"| Licence | {NO_LICENCE} |",
            f"| test | {report['test_images']} | {report['test_accuracy']:.4f} |",
            f"| validation | {report['val_images']} | {report['val_accuracy']:.4f} |",
            f"on the test split (transfer gain {report['baseline']['transfer_gain']:+.4f})",
            f"(manual): base learning rate {report['schedule']['base_lr']:g}",
            "1 epoch trained.", requirements, "python predict.py photo.jpg",
            model["created_at"][:10],
        ):  # fmt: skip
            assert fact in card, (format, fact)
        for entry in dataset["classes"]:
            assert f"| {entry['name']} | {entry['count']} |" in card
        for group in report["groups"]:
            rate = "frozen" if group["frozen"] else f"{group['lr']:g}"
            assert f"| {group['group']} | {group['parameters']:,} | {rate} |" in card
        assert "{{" not in card and "{%" not in card


def test_a_second_export_is_served_from_the_store(
    service: TestClient, model: dict, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = data_dir / "models" / model["id"]
    stored = folder / "exports" / f"onnx-{bundle_version()}" / f"model-{model['id']}-onnx.zip"
    with caplog.at_level(logging.INFO, logger="p2l.models"):
        first, etag = export(service, model["id"], "onnx")  # built now, or by the test above
        assert stored.is_file()
        written = stored.stat().st_mtime_ns
        caplog.clear()
        again, etag_again = export(service, model["id"], "onnx")
    assert not [r for r in caplog.records if "export built" in r.getMessage()]
    assert again == first and etag_again == etag
    assert stored.stat().st_mtime_ns == written
    with zipfile.ZipFile(stored) as archive:
        assert archive.namelist() == list(first)
    # Counted with the model: weights and every stored export, in its project's usage too.
    assert stored_bytes(data_dir, model["id"]) == folder_bytes(folder)
    assert folder_bytes(folder / "exports") > 10_000
    assert not any((data_dir / "tmp").iterdir())  # nothing left behind in staging


def test_an_export_is_kept_within_the_storage_quota_and_deleted_with_its_model(
    service: TestClient, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = finetuned(service, per_class=4)
    folder = data_dir / "models" / other["id"]
    stored = folder / "exports" / f"onnx-{bundle_version()}"
    counted, full = stored_bytes(data_dir, other["id"]), usage(service)
    assert counted == folder_bytes(folder)
    # At its storage quota, the project still gets its export; the service keeps none.
    limit = service.patch("/v1/projects/default", json={"quotas": {"max_storage_bytes": full}})
    assert limit.status_code == 200, limit.text
    try:
        with caplog.at_level(logging.INFO, logger="p2l.models"):
            files, _ = export(service, other["id"], "onnx")
        assert list(files) == bundle_files("onnx") and len(files["model.onnx"]) > 10_000
        said = [r.getMessage() for r in caplog.records if r.name == "p2l.models"]
        assert "onnx export built" in said[0] and "served, not kept" in said[1], said
    finally:
        reset = service.patch("/v1/projects/default", json={"quotas": {"max_storage_bytes": None}})
        assert reset.status_code == 200, reset.text
    assert not stored.exists()
    assert stored_bytes(data_dir, other["id"]) == counted and usage(service) == full
    assert not any((data_dir / "tmp").iterdir())  # the zip built for that request alone is gone
    # Within it, the export is kept and counted with the model.
    export(service, other["id"], "onnx")
    assert stored.is_dir()
    assert (
        stored_bytes(data_dir, other["id"])
        == folder_bytes(folder)
        == counted + folder_bytes(stored)
    )
    assert usage(service) == full + folder_bytes(stored)
    # Deleting the model deletes its exports, and the project counts none of it any more.
    assert service.delete(f"/v1/models/{other['id']}").status_code == 204
    assert not folder.exists()
    assert usage(service) == full - counted
    assert service.get(f"/v1/models/{other['id']}/export").status_code == 404


def test_predict_py_reports_an_unreadable_image_and_classifies_the_rest(
    service: TestClient, model: dict, tmp_path: Path
) -> None:
    """Run here by this venv's python (it has onnxruntime, numpy and Pillow); the fresh
    venv of tests/finetune/test_export.py proves the dependency list."""
    files, _ = export(service, model["id"], "onnx")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name, data in files.items():
        (bundle / name).write_bytes(data)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = DATA / "clipart" / "food" / "beer.png"
    images = [str(good), str(broken), str(tmp_path / "gone.jpg"), str(good)]
    done = subprocess.run(
        [sys.executable, str(bundle / "predict.py"), *images],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    path, label, probability = lines[0].split("\t")
    assert path == str(good) and label in model["class_names"]
    assert 0 < float(probability) <= 1 and len(probability.split(".")[1]) == 4
    errors = done.stderr.splitlines()
    assert errors[0] == (
        f"predict.py: {broken}: not a decodable image (supported formats: PNG, JPEG, GIF, BMP, "
        "WEBP, TIFF)"
    )
    assert errors[1] == f"predict.py: {tmp_path / 'gone.jpg'}: No such file or directory"
    assert errors[2] == "predict.py: 2 of 4 images not classified"
    usage_error = subprocess.run(
        [sys.executable, str(bundle / "predict.py")], capture_output=True, text=True, timeout=60
    )
    assert usage_error.returncode == 2 and "usage: predict.py" in usage_error.stderr
