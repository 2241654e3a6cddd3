"""Evaluation reports: per-class metrics, confusion matrix picture, misclassified images, and
POST /v1/models/{id}/evaluate on labelled archives (at once, or as a job)."""

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from app.config import Settings
from app.families import get_spec, load_model
from app.finetune.evaluation import evaluation_report
from app.finetune.pipeline import FinetuneOptions, finetune, three_way_split
from app.finetune.train import ImageTensors, evaluate
from app.jobs.service import submit_job
from app.main import create_app
from app.models import FinetunedModel, Job
from app.services.evaluations import evaluation_key, sweep_evaluation_archives
from app.zoo.bundled import BUNDLED_DIR
from app.zoo.plots import confusion_plot
from tests.archives import (
    fashion_mnist_images,
    image_folder_entries,
    zip_bomb,
    zip_bytes,
    zip_with_raw_names,
)
from tests.helpers import PROBLEM, finetuned_model, wait_for_job

SYNC_LIMIT = 30  # P2L_EVALUATE_SYNC_MAX_IMAGES of the test service
UPLOADED_PER_CLASS = 30  # of the 50 garments per class; the rest are held out


# --- the report itself ---------------------------------------------------------------------


@pytest.mark.unit
def test_report_metrics_by_hand() -> None:
    # 4 classes: "c" is in the split but never predicted, "d" neither in it nor predicted.
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 1, 1, 0, 0, 1])
    probabilities = np.full((7, 4), 0.1)
    probabilities[np.arange(7), predicted] = [0.7, 0.7, 0.6, 0.7, 0.9, 0.55, 0.8]
    names = [f"{'abc'[label]}/{i}.png" for i, label in enumerate(labels)]
    report = evaluation_report(predicted, labels, probabilities, list("abcd"), names, "test")

    assert report["split"] == "test" and report["images"] == 7
    assert report["accuracy"] == pytest.approx(3 / 7)
    assert report["confusion_matrix"] == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    a, b, c, d = (report["per_class"][k] for k in "abcd")
    assert a == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert b == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "support": 2})
    # Never predicted: precision undefined, recall and F1 0 (a missed class counts).
    assert c == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 2}
    assert d == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert report["macro_f1"] == pytest.approx((4 / 7 + 0.4 + 0) / 3)

    # Most confident mistakes first, all counted.
    wrong = report["misclassified"]
    assert report["misclassified_total"] == 4
    assert [m["image"] for m in wrong] == ["b/4.png", "c/6.png", "a/2.png", "c/5.png"]
    assert wrong[0] == {
        "image": "b/4.png", "true_label": "b", "predicted_label": "a", "confidence": 0.9,
    }  # fmt: skip
    capped = evaluation_report(
        predicted, labels, probabilities, list("abcd"), names, "test", max_listed=2
    )
    assert len(capped["misclassified"]) == 2 and capped["misclassified_total"] == 4

    with pytest.raises(ValueError, match="must match"):
        evaluation_report(predicted, labels, probabilities, list("abcd"), names[:3], "test")


@pytest.mark.unit
def test_report_of_an_empty_split_defines_nothing() -> None:
    # Nothing to count: the report says so with nulls, not an error.
    nothing = np.zeros(0, dtype=np.int64)
    report = evaluation_report(nothing, nothing, np.zeros((0, 2)), ["a", "b"], [], "test")
    assert report["images"] == 0 and report["accuracy"] == 0.0 and report["macro_f1"] == 0.0
    assert report["confusion_matrix"] == [[0, 0], [0, 0]]
    blank = {"precision": None, "recall": None, "f1": None, "support": 0}
    assert report["per_class"] == {"a": blank, "b": blank}
    assert report["misclassified"] == [] and report["misclassified_total"] == 0


@pytest.mark.unit
def test_evaluate_gives_softmax_probabilities_on_request() -> None:
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize((32, 32)))
         for pngs in fashion_mnist_images(per_class=4).values() for png in pngs]
    )  # fmt: skip
    labels = np.repeat(np.arange(5), 4)
    spec = get_spec("compact_cnn")
    model = load_model("compact_cnn", 10, BUNDLED_DIR / "sources" / "fashion_9k.safetensors")
    data = ImageTensors(images, labels, spec.mean, spec.std)
    plain = evaluate(model, data)
    scored = evaluate(model, data, probabilities=True, batch_size=7)
    assert plain.probabilities is None
    assert scored.probabilities is not None and scored.probabilities.shape == (20, 10)
    assert np.allclose(scored.probabilities.sum(1), 1, atol=1e-5)
    assert (scored.probabilities.argmax(1) == plain.predictions).all()
    assert scored.accuracy == plain.accuracy


@pytest.mark.unit
def test_finetune_reports_on_test_then_validation_with_image_names() -> None:
    garments = fashion_mnist_images(per_class=20)
    class_names = sorted(garments)
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize((32, 32)))
         for name in class_names for png in garments[name]]
    )  # fmt: skip
    labels = np.repeat(np.arange(5), 20)
    names = [f"{name}/{i:04d}.png" for name in class_names for i in range(20)]
    spec = get_spec("compact_cnn")
    source = load_model("compact_cnn", 10, BUNDLED_DIR / "sources" / "fashion_9k.safetensors")
    runs = {}
    for test_fraction in (0.2, 0.0):
        options = FinetuneOptions(
            schedule="manual", epochs=1, patience=None, test_fraction=test_fraction
        )
        _, report = finetune(
            source, "compact_cnn", images, labels, class_names, spec.mean, spec.std, options,
            image_names=names,
        )  # fmt: skip
        runs[test_fraction] = (options, report)

    options, report = runs[0.2]
    _, _, test = three_way_split(labels, options.val_fraction, options.test_fraction, 0)
    evaluation = report.evaluation
    assert evaluation is not None and evaluation["split"] == "test" == report.evaluated_on
    assert evaluation["images"] == len(test) == report.test_images
    assert evaluation["accuracy"] == pytest.approx(report.test_accuracy)
    assert evaluation["confusion_matrix"] == report.confusion_matrix
    test_names = {names[i] for i in test}
    assert {m["image"] for m in evaluation["misclassified"]} <= test_names
    for wrong in evaluation["misclassified"]:
        assert wrong["image"].split("/")[0] == wrong["true_label"] != wrong["predicted_label"]
    confidences = [m["confidence"] for m in evaluation["misclassified"]]
    assert confidences == sorted(confidences, reverse=True)

    _, without_test = runs[0.0]
    assert without_test.evaluation is not None
    assert without_test.evaluation["split"] == "validation" == without_test.evaluated_on
    assert without_test.evaluation["images"] == without_test.val_images


@pytest.mark.unit
def test_confusion_plot_is_a_labelled_png() -> None:
    png = confusion_plot([[5, 1], [2, 7]], ["sandal", "sneaker"], "test split: accuracy 0.800")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width > 300


# --- the API --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evaluation") / "data"


@pytest.fixture(scope="module")
def service(data_dir: Path) -> Iterator[TestClient]:
    """A started service with its job worker, answering at once up to 30 images."""
    settings = Settings(
        _env_file=None, data_dir=data_dir, start_worker=True, evaluate_sync_max_images=SYNC_LIMIT
    )
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    client.__enter__()
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def garments() -> dict[str, list[bytes]]:
    return fashion_mnist_images(per_class=50)


@pytest.fixture(scope="module")
def uploaded(garments: dict[str, list[bytes]]) -> dict[str, bytes]:
    """The archive entries uploaded as the target dataset: ``<class>/<index>.png``."""
    return image_folder_entries({k: v[:UPLOADED_PER_CLASS] for k, v in garments.items()})


@pytest.fixture(scope="module")
def held_out(garments: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
    return {k: v[UPLOADED_PER_CLASS:] for k, v in garments.items()}


@pytest.fixture(scope="module")
def model(service: TestClient, uploaded: dict[str, bytes]) -> dict:
    """A digits source fine-tuned for one epoch on garments: a model that makes mistakes."""
    finished = finetuned_model(service, zip_bytes(uploaded), "digits_1100", epochs=1)
    return service.get(f"/v1/models/{finished['model_id']}").json()


def evaluate_archive(
    client: TestClient, model_id: str, data: bytes, headers: dict[str, str] | None = None
):
    return client.post(
        f"/v1/models/{model_id}/evaluate", files={"file": ("eval.zip", data)}, headers=headers
    )


def stored(data_dir: Path, folder: str) -> list[Path]:
    root = data_dir / folder
    return sorted(root.rglob("*")) if root.exists() else []


@pytest.mark.system
def test_model_report_has_its_evaluation_and_pictures(
    service: TestClient, model: dict, uploaded: dict[str, bytes]
) -> None:
    report = model["report"]
    evaluation = report["evaluation"]
    assert evaluation["split"] == "test" == report["evaluated_on"]
    assert evaluation["images"] == report["test_images"] == 30  # 6 of each class's 30
    assert evaluation["class_names"] == model["class_names"]
    assert set(evaluation["per_class"]) == set(model["class_names"])
    assert all(c["support"] == 6 for c in evaluation["per_class"].values())
    assert np.array(evaluation["confusion_matrix"]).sum() == 30
    assert evaluation["accuracy"] == pytest.approx(report["test_accuracy"])
    wrong = evaluation["misclassified"]
    assert evaluation["misclassified_total"] == len(wrong) > 0
    assert all(m["image"] in uploaded for m in wrong)  # named class/file of the dataset

    png = service.get(f"/v1/models/{model['id']}/confusion.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).format == "PNG"

    first = service.get(f"/v1/models/{model['id']}/misclassified/0")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.content == uploaded[wrong[0]["image"]]
    beyond = service.get(f"/v1/models/{model['id']}/misclassified/{len(wrong)}")
    assert beyond.status_code == 404 and beyond.headers["content-type"] == PROBLEM
    assert f"lists {len(wrong)} misclassified images" in beyond.json()["detail"]
    assert service.get(f"/v1/models/{model['id']}/misclassified/-1").status_code == 422


@pytest.mark.system
def test_small_archive_is_evaluated_at_once(
    service: TestClient, model: dict, held_out: dict[str, list[bytes]], data_dir: Path
) -> None:
    chosen = {name: images[:5] for name, images in held_out.items()}  # 25 <= 30
    entries = image_folder_entries(chosen)
    entries["dress/notes.txt"] = b"not an image"
    response = evaluate_archive(service, model["id"], zip_bytes(entries))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["split"] == "archive" and report["images"] == 25
    assert report["rejected_total"] == 1 and report["rejected"][0]["kind"] == "not_an_image"
    assert all(c["support"] == 5 for c in report["per_class"].values())
    assert {m["image"] for m in report["misclassified"]} <= set(entries)

    # The same predictions as the predict route gives, image by image.
    files = [("files", (name, data)) for name, data in entries.items() if name.endswith(".png")]
    predictions = service.post(f"/v1/models/{model['id']}/predict", files=files).json()
    predicted = {p["filename"]: p["top"][0]["label"] for p in predictions["predictions"]}
    truth = {name: name.split("/")[0] for name, _ in (f[1] for f in files)}
    wrong = {name for name in predicted if predicted[name] != truth[name]}
    assert {m["image"] for m in report["misclassified"]} == wrong
    assert report["accuracy"] == pytest.approx(1 - len(wrong) / 25)
    assert stored(data_dir, "evaluations") == []
    assert not any((data_dir / "tmp").iterdir())

    # Some of the model's classes only: the others have no support and no recall.
    two = evaluate_archive(
        service, model["id"], zip_bytes(image_folder_entries({"dress": held_out["dress"][:3]}))
    ).json()
    assert two["images"] == 3 and two["per_class"]["dress"]["support"] == 3
    assert two["per_class"]["sneaker"]["recall"] is None


@pytest.mark.system
def test_bad_archives_are_refused_and_leave_nothing(
    service: TestClient, model: dict, held_out: dict[str, list[bytes]], data_dir: Path
) -> None:
    jobs_before = service.get("/v1/jobs").json()["items"]
    unknown = image_folder_entries({"dress": held_out["dress"][:2], "cats": held_out["dress"][2:4]})
    response = evaluate_archive(service, model["id"], zip_bytes(unknown))
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    assert "'cats'" in response.json()["detail"] and response.json()["unknown_classes"] == ["cats"]

    bomb = evaluate_archive(service, model["id"], zip_bomb(300 * 1024**2))
    assert bomb.status_code == 422 and "compression bomb" in bomb.json()["detail"]
    garbage = evaluate_archive(service, model["id"], b"PK\x03\x04 this is not a zip at all")
    assert garbage.status_code == 422
    empty = evaluate_archive(service, model["id"], zip_bytes({"dress/a.txt": b"text"}))
    assert empty.status_code == 422 and "no usable image" in empty.json()["detail"]
    missing = evaluate_archive(service, "0" * 32, zip_bytes(image_folder_entries(held_out)))
    assert missing.status_code == 404

    assert service.get("/v1/jobs").json()["items"] == jobs_before
    assert stored(data_dir, "evaluations") == []
    assert not any((data_dir / "tmp").iterdir())


@pytest.mark.system
def test_zip_members_with_undecodable_or_nul_names_are_rejected_alone(
    service: TestClient, model: dict, held_out: dict[str, list[bytes]]
) -> None:
    # Issue #23 (8, 9): a name flagged UTF-8 that is not made zipfile fail on the whole
    # archive (500); a NUL byte was cut off by zipfile, so dress/y\0.png was read as dress/y.
    entries = image_folder_entries({name: images[:2] for name, images in held_out.items()})
    image = entries["dress/0000.png"]
    archive = zip_with_raw_names(
        {**entries, "dress/xx.png": image, "dress/yy.png": image},
        {"dress/xx.png": b"dress/\xff\xfe.png", "dress/yy.png": b"dress/y\x00.png"},
    )
    response = evaluate_archive(service, model["id"], archive)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["images"] == 10
    assert {(r["path"], r["kind"]) for r in report["rejected"]} == {
        ("dress/\ufffd\ufffd.png", "invalid_name"),
        ("dress/y\ufffd.png", "unsafe_path"),
    }


@pytest.mark.system
def test_large_archive_becomes_an_evaluation_job(
    service: TestClient, model: dict, held_out: dict[str, list[bytes]], data_dir: Path
) -> None:
    entries = image_folder_entries(held_out)  # 100 images > 30
    archive = zip_bytes(entries)  # built once: a retry re-sends the same bytes
    headers = {"Idempotency-Key": "evaluate-everything-once"}
    response = evaluate_archive(service, model["id"], archive, headers)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "evaluate" and response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["params"]["model_id"] == model["id"] and job["params"]["images"] == 100
    again = evaluate_archive(service, model["id"], archive, headers)
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    assert again.headers["idempotent-replayed"] == "true"

    finished = wait_for_job(service, job["id"])
    assert finished["status"] == "succeeded", finished
    assert finished["progress"]["phase"] == "done"
    report = finished["result"]
    assert report["split"] == "archive" and report["images"] == 100
    assert set(report["per_class"]) == set(model["class_names"])
    assert np.array(report["confusion_matrix"]).sum() == 100
    assert {m["image"] for m in report["misclassified"]} <= set(entries)
    # The stored images went once the report was recorded.
    assert stored(data_dir, "evaluations") == []


@pytest.mark.system
def test_models_made_before_evaluation_reports_still_work(
    service: TestClient, model: dict, held_out: dict[str, list[bytes]]
) -> None:
    sessions = service.app.state.service.sessions
    with sessions() as session:
        row = session.get(FinetunedModel, model["id"])
        row.report = {k: v for k, v in row.report.items() if k != "evaluation"}
        session.commit()
    try:
        old = service.get(f"/v1/models/{model['id']}")
        assert old.status_code == 200 and old.json()["report"]["evaluation"] is None
        png = service.get(f"/v1/models/{model['id']}/confusion.png")  # from the report's matrix
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        gone = service.get(f"/v1/models/{model['id']}/misclassified/0")
        assert gone.status_code == 404 and "no evaluation report" in gone.json()["detail"]
        small = zip_bytes(image_folder_entries({"dress": held_out["dress"][:2]}))
        assert evaluate_archive(service, model["id"], small).status_code == 200
    finally:
        with sessions() as session:
            row = session.get(FinetunedModel, model["id"])
            row.report = model["report"]
            session.commit()


@pytest.mark.system
def test_misclassified_image_of_a_deleted_dataset_is_a_clear_404(
    service: TestClient, model: dict
) -> None:
    with service.app.state.service.sessions() as session:
        assert session.scalars(select(Job).where(Job.status == "running")).first() is None
    assert service.delete(f"/v1/datasets/{model['target_dataset_id']}").status_code == 204
    response = service.get(f"/v1/models/{model['id']}/misclassified/0")
    assert response.status_code == 404 and response.headers["content-type"] == PROBLEM
    assert "was deleted" in response.json()["detail"]
    # The report and its picture do not need the dataset.
    assert service.get(f"/v1/models/{model['id']}/confusion.png").status_code == 200


@pytest.mark.api
def test_sweep_removes_archives_of_ended_or_missing_jobs(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path / "data", start_worker=False, import_bundled_zoo=False
    )
    with TestClient(create_app(settings)) as client:  # no worker: the job stays queued
        _sweep_checks(client)


def _sweep_checks(client: TestClient) -> None:
    state = client.app.state.service
    store = state.store
    with state.sessions() as session:
        queued = submit_job(session, "evaluate", {"model_id": "0" * 32, "images": 1})
        session.commit()
        queued_id = queued.id
    try:
        for key in (evaluation_key(queued_id), evaluation_key("f" * 32)):
            staging = store.new_staging_dir()
            (staging / "images").mkdir()
            store.publish(staging, key)
        with state.sessions() as session:
            assert sweep_evaluation_archives(session, store, older_than_seconds=3600) == 0
            assert sweep_evaluation_archives(session, store, older_than_seconds=0) == 1
        assert store.keys_under("evaluations") == {evaluation_key(queued_id)}
        with state.sessions() as session:
            session.get(Job, queued_id).status = "cancelled"  # ended: its archive may go
            session.commit()
            assert sweep_evaluation_archives(session, store, older_than_seconds=0) == 1
        assert store.keys_under("evaluations") == set()
    finally:
        store.delete(evaluation_key(queued_id))


@pytest.mark.api
def test_deleting_an_evaluation_job_deletes_its_archive(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path / "data", start_worker=False, import_bundled_zoo=False
    )
    with TestClient(create_app(settings)) as client:  # no worker: the job stays queued
        state = client.app.state.service
        with state.sessions() as session:
            job_id = submit_job(session, "evaluate", {"model_id": "0" * 32, "images": 1}).id
            session.commit()
        staging = state.store.new_staging_dir()
        (staging / "images").mkdir()
        state.store.publish(staging, evaluation_key(job_id))
        # Every job body says that nothing will run a queued job, and why.
        listed = client.get("/v1/jobs").json()["items"]
        assert [j["id"] for j in listed] == [job_id]
        assert any("P2L_START_WORKER=false" in w for w in listed[0]["warnings"])
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 409
        assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert state.store.keys_under("evaluations") == set()
