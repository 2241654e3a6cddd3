"""Jobs and models stored by earlier releases stay readable after the schemas got typed."""

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.models import FinetunedModel, Job

pytestmark = pytest.mark.api

CLASSES = ["dress", "shirt"]

# A fine-tune result as the first release of jobs (#4) stored it: no test split, no
# evaluation, epochs without a phase or training time, a baseline scored on validation.
FIRST_RELEASE_REPORT: dict[str, Any] = {
    "model_id": "0" * 32,
    "schedule": {"base_lr": 0.05, "decay": 0.5, "multipliers": None, "freeze_below": 0,
                 "chosen_by": "manual"},
    "groups": [{"group": "head", "parameters": 258, "lr": 0.05, "frozen": False}],
    "history": [{"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.6, "val_accuracy": 0.7,
                 "seconds": 0.4}],
    "val_accuracy": 0.7,
    "per_class_accuracy": {"dress": 0.8, "shirt": 0.6},
    "confusion_matrix": [[4, 1], [2, 3]],
    "train_images": 40,
    "val_images": 10,
    "seconds": 3.2,
    "auto_search": None,
    "baseline": {"val_accuracy": 0.5, "epochs_run": 1, "seconds": 0.5, "transfer_gain": 0.2},
    "warnings": [],
}  # fmt: skip
# The progress a worker of that release left: phases as free text.
FIRST_RELEASE_PROGRESS = {
    "phase": "auto {'decay': 1.0}",
    "epoch": 1,
    "epochs": 10,
    "history": [{"phase": "auto {'decay': 1.0}", **FIRST_RELEASE_REPORT["history"][0]}],
    "elapsed_seconds": 3.0,
    "eta_seconds": 0.0,
}


def test_reports_of_the_first_release_are_served(make_client: Callable[..., TestClient]) -> None:
    client = make_client(import_bundled_zoo=False)
    with client.app.state.service.sessions() as session:  # type: ignore[attr-defined]
        session.add(
            Job(id="1" * 32, kind="finetune", status="succeeded", params={"options": {}},
                progress=FIRST_RELEASE_PROGRESS, result=FIRST_RELEASE_REPORT,
                model_id="0" * 32, attempts=1)
        )  # fmt: skip
        session.add(
            FinetunedModel(id="0" * 32, name="first-release", job_id="1" * 32,
                           source_id="2" * 32,
                           target_dataset_id="3" * 32, architecture="compact_cnn",
                           input_size=32, class_names=CLASSES, report=FIRST_RELEASE_REPORT,
                           artifact_key="models/" + "0" * 32)
        )  # fmt: skip
        session.commit()

    model = client.get(f"/v1/models/{'0' * 32}")
    assert model.status_code == 200, model.text
    report = model.json()["report"]
    assert report["val_accuracy"] == 0.7 and report["test_accuracy"] is None
    assert report["evaluation"] is None and report["history"][0]["phase"] == "fine_tune"
    assert client.get("/v1/models").status_code == 200

    job = client.get(f"/v1/jobs/{'1' * 32}")
    assert job.status_code == 200, job.text
    assert job.json()["result"]["baseline"]["val_accuracy"] == 0.5
    assert job.json()["progress"]["history"][0]["epoch"] == 1
    assert client.get("/v1/jobs").status_code == 200
    # The report's own confusion matrix still makes a picture.
    png = client.get(f"/v1/models/{'0' * 32}/confusion.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
