"""An install of the previous release (before projects, #24) upgrades in place.

The previous release's own code (commit ``PREVIOUS_RELEASE``, checked out with ``git
archive``) builds real state in a subprocess: its keys in P2L_API_KEYS, a dataset, a source
with that dataset and one with an uploaded signature only, a ranking, a fine-tune run to
success (so a model and its evidence exist), the model registered as a source. Then this
release starts over the same database and data dir: nothing is lost, every object lands in
the ``default`` project, and the old keys act there as operator keys.
"""

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, inspect, select, table, text
from sqlalchemy.engine import Engine

from app.config import Settings
from app.db import MIGRATIONS_DIR
from app.models import DEFAULT_PROJECT_ID, DEFAULT_PROJECT_NAME
from app.zoo.bundled import manifest
from tests.archives import bundled_target_images, image_folder_entries, zip_bytes

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS_RELEASE = "91e1b9d"  # the last commit before the work on projects (#24)
OLD_KEY = "old-key"
# The tables whose rows belong to a project from revision 0010 on.
OWNED = ("datasets", "sources", "rankings", "jobs", "models", "evidence")

# Run by the previous release's code (PYTHONPATH and cwd: its checkout), with its settings
# from P2L_* variables; argv[1] is a folder with the inputs, where it writes state.json.
BUILD_OLD_STATE = r"""
import json
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.worker import run_next_job
from app.zoo.bundled import BUNDLED_DIR

work = Path(sys.argv[1])
settings = Settings()
key = {"X-API-Key": "old-key"}


def ok(response, status):
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()


with TestClient(create_app(settings)) as client:
    assert client.post("/v1/rankings", json={"target_dataset_id": "x"}).status_code == 401
    archive = (work / "target.zip").read_bytes()
    dataset = ok(
        client.post("/v1/datasets", files={"file": ("fashion.zip", archive)}, headers=key), 201
    )["id"]
    weights = (BUNDLED_DIR / "sources" / "fashion_9k.safetensors").read_bytes()
    form = {"architecture": "compact_cnn", "num_classes": "10"}
    with_dataset = ok(client.post(
        "/v1/sources", files={"weights": ("w.safetensors", weights)},
        data={**form, "name": "with-dataset", "dataset_id": dataset}, headers=key,
    ), 201)["id"]
    signature = client.get(
        f"/v1/datasets/{dataset}/signature?format=safetensors", headers=key
    ).content
    signature_only = ok(client.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", weights), "signature": ("s", signature)},
        data={**form, "name": "signature-only"}, headers=key,
    ), 201)["id"]
    ranking = ok(
        client.post("/v1/rankings", json={"target_dataset_id": dataset}, headers=key), 201
    )["id"]
    job = ok(client.post("/v1/finetunes", json={
        "target_dataset_id": dataset, "source_id": with_dataset, "schedule": "manual",
        "epochs": 1, "patience": None,
    }, headers=key), 202)["id"]
    # The job as the worker runs it (one claimed job, the worker loop's own code).
    assert run_next_job(settings, "previous-release-worker") == job
    finished = ok(client.get(f"/v1/jobs/{job}", headers=key), 200)
    assert finished["status"] == "succeeded", finished
    model = finished["model_id"]
    registered = ok(client.post(
        f"/v1/models/{model}/register", json={"name": "registered"}, headers=key
    ), 201)["id"]
    files = [("files", (p.name, p.read_bytes())) for p in sorted(work.glob("heldout-*.png"))]
    predicted = ok(client.post(f"/v1/models/{model}/predict", files=files, headers=key), 200)
    evidence = ok(client.get("/v1/calibration/evidence", headers=key), 200)["items"]
    assert [e["job_id"] for e in evidence] == [job], evidence

(work / "state.json").write_text(json.dumps({
    "dataset": dataset, "with_dataset": with_dataset, "signature_only": signature_only,
    "registered": registered, "ranking": ranking, "job": job, "model": model,
    "predictions": predicted["predictions"], "evidence": evidence[0]["id"],
}))
"""


def previous_release(into: Path) -> Path:
    """The previous release's ``app`` package, extracted from git into ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS_RELEASE, "app"],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    if archive.returncode != 0:  # e.g. a shallow clone: `git fetch --unshallow` brings it
        pytest.fail(f"no commit {PREVIOUS_RELEASE} in {ROOT}: {archive.stderr.decode()}")
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=120)
    return into


def head_revision() -> str:
    """The newest revision of this release's migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return str(ScriptDirectory.from_config(config).get_current_head())


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows of every table in the database."""
    with engine.connect() as connection:
        return {
            name: connection.execute(select(func.count()).select_from(table(name))).scalar_one()
            for name in inspect(connection).get_table_names()
        }


def schema_revision(engine: Engine) -> str:
    """The Alembic revision the database is at."""
    with engine.connect() as connection:
        return str(connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one())


def store_files(data_dir: Path) -> dict[str, str]:
    """Every file of the store (not the SQLite database), by path: its SHA-256."""
    return {
        str(path.relative_to(data_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(data_dir.rglob("*"))
        if path.is_file() and not path.name.startswith("p2l.db")
    }


@pytest.mark.system
def test_previous_release_upgrades_in_place_into_the_default_project(
    make_client: Callable[..., TestClient],
    data_dir: Path,
    database_url: str | None,
    tmp_path: Path,
) -> None:
    zoo = manifest()
    assert zoo is not None, "the bundled zoo is part of the repository"
    bundled_count = len(zoo["sources"])
    old_code = previous_release(tmp_path / "previous-release")
    work = tmp_path / "work"
    work.mkdir()
    (work / "target.zip").write_bytes(
        zip_bytes(image_folder_entries(bundled_target_images("fashion")))
    )
    heldout = bundled_target_images("fashion", part="test")
    for cls, images in heldout.items():
        (work / f"heldout-{cls}.png").write_bytes(images[0])

    env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    env |= {
        "PYTHONPATH": str(old_code),
        "P2L_DATA_DIR": str(data_dir),
        "P2L_API_KEYS": OLD_KEY,
        "P2L_START_WORKER": "false",
        "P2L_DEVICE": "cpu",
    }
    if database_url:
        env["P2L_DATABASE_URL"] = database_url
    done = subprocess.run(
        [sys.executable, "-c", BUILD_OLD_STATE, str(work)],
        cwd=old_code, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    old = json.loads((work / "state.json").read_text())

    settings = Settings(_env_file=None, data_dir=data_dir, database_url=database_url)
    engine = create_engine(settings.sqlalchemy_url)
    try:
        assert schema_revision(engine) == "0009"  # the previous release's schema
        before, files_before = row_counts(engine), store_files(data_dir)
        assert {name: before[name] for name in OWNED} == {
            "datasets": 1, "sources": bundled_count + 3, "rankings": 1, "jobs": 1,
            "models": 1, "evidence": 1,
        }  # fmt: skip

        new = make_client(database_url=database_url, api_keys=[OLD_KEY])
        assert schema_revision(engine) == head_revision()  # 0010 (projects) and after
        after = row_counts(engine)
        with engine.connect() as connection:
            owners = {
                name: set(
                    connection.execute(text(f"SELECT DISTINCT project_id FROM {name}")).scalars()
                )
                for name in OWNED
            }
            sources = {
                row.id: row
                for row in connection.execute(
                    text("SELECT id, origin, shared, image_counts FROM sources")
                )
            }
    finally:
        engine.dispose()

    # Nothing lost: every table keeps its rows, every stored file its bytes; the new tables
    # hold the default project alone.
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) == {"projects", "api_keys", "audit_log"}
    assert (after["projects"], after["api_keys"], after["audit_log"]) == (1, 0, 0)
    files_after = store_files(data_dir)
    assert {path: files_after.get(path) for path in files_before} == files_before

    # Every object lands in the default project.
    assert owners == {name: {DEFAULT_PROJECT_ID} for name in OWNED}
    # The bundled zoo is the shared zoo; the signature-only source's counts are claimed.
    bundled = {i for i, row in sources.items() if row.origin == "bundled"}
    assert len(bundled) == bundled_count and all(sources[i].shared for i in bundled)
    assert not any(row.shared for i, row in sources.items() if i not in bundled)
    assert sources[old["signature_only"]].image_counts == "claimed"
    assert all(
        row.image_counts == "verified" for i, row in sources.items() if i != old["signature_only"]
    )

    # The old key is an operator key acting in the default project; no key, no access.
    key = {"X-API-Key": OLD_KEY}
    whoami = new.get("/v1/whoami", headers=key)
    assert whoami.status_code == 200, whoami.text
    assert whoami.json() | {"key_id": None} == {
        "project_id": DEFAULT_PROJECT_ID, "project_name": DEFAULT_PROJECT_NAME,
        "role": "operator", "key_id": None, "key_name": whoami.json()["key_name"],
        "authenticated": True,
    }  # fmt: skip
    for path in ("/v1/whoami", "/v1/datasets", f"/v1/models/{old['model']}"):
        assert new.get(path).status_code == 401, path
    assert new.get("/v1/whoami", headers={"X-API-Key": "not-a-key"}).status_code == 401

    # The API shows the same objects, in the default project, its usage counts them all.
    def get(path: str, **params: object) -> dict:
        response = new.get(path, params=params, headers=key)
        assert response.status_code == 200, (path, response.text)
        return dict(response.json())

    for path, ids in (
        ("/v1/datasets", {old["dataset"]}),
        ("/v1/jobs", {old["job"]}),
        ("/v1/models", {old["model"]}),
        ("/v1/calibration/evidence", {old["evidence"]}),
        ("/v1/projects", {DEFAULT_PROJECT_ID}),
    ):
        assert {item["id"] for item in get(path)["items"]} == ids, path
    listed = get("/v1/sources", page_size=200)["items"]
    assert {s["id"] for s in listed} == set(sources)
    assert {s["project_id"] for s in listed} == {DEFAULT_PROJECT_ID}
    by_id = {s["id"]: s for s in listed}
    assert by_id[old["signature_only"]]["image_counts"] == "claimed"
    assert not by_id[old["with_dataset"]]["shared"] and not by_id[old["registered"]]["shared"]
    assert get(f"/v1/rankings/{old['ranking']}")["target_dataset_id"] == old["dataset"]
    job = get(f"/v1/jobs/{old['job']}")
    assert job["status"] == "succeeded" and job["model_id"] == old["model"]
    usage = get(f"/v1/projects/{DEFAULT_PROJECT_ID}/usage")
    assert usage["storage_bytes"] > 0 and usage["active_jobs"] == 0
    assert {n: usage[n] for n in ("datasets", "sources", "models", "rankings", "jobs")} == {
        "datasets": 1, "sources": len(sources) - len(bundled), "models": 1, "rankings": 1,
        "jobs": 1,
    }  # fmt: skip

    # The model still predicts, as it did before the upgrade.
    files = [("files", (p.name, p.read_bytes())) for p in sorted(work.glob("heldout-*.png"))]
    predicted = new.post(f"/v1/models/{old['model']}/predict", files=files, headers=key)
    assert predicted.status_code == 200, predicted.text
    now = predicted.json()["predictions"]
    assert [[t["label"] for t in p["top"]] for p in now] == [
        [t["label"] for t in p["top"]] for p in old["predictions"]
    ]
    for was, is_ in zip(old["predictions"], now, strict=True):
        assert [t["probability"] for t in is_["top"]] == pytest.approx(
            [t["probability"] for t in was["top"]], abs=1e-5
        )
    # A new ranking over the upgraded zoo still ranks the old sources.
    ranking = new.post("/v1/rankings", json={"target_dataset_id": old["dataset"]}, headers=key)
    assert ranking.status_code == 201, ranking.text
    ranked = {r["source_id"] for r in ranking.json()["results"]}
    assert {old["with_dataset"], old["signature_only"], old["registered"]} <= ranked
    # The audit log (newest first) names the old key by its fingerprint, in the default
    # project.
    entries = get("/v1/audit")["items"]
    assert [(e["action"], e["project_id"], e["status"]) for e in entries] == [
        ("POST /v1/rankings", DEFAULT_PROJECT_ID, 201),
        ("POST /v1/models/{model_id}/predict", DEFAULT_PROJECT_ID, 200),
    ]
    assert {e["key_id"] for e in entries} == {whoami.json()["key_name"]}, entries
