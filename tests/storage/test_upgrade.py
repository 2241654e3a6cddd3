"""Moving an existing install to a new reference network: ``python -m app.zoo upgrade``."""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from app.families import build_model, weights_to_save
from app.zoo.bundled import BUNDLED_DIR, manifest
from tests.archives import bundled_target_images, image_folder_entries, zip_bytes

ROOT = Path(__file__).parents[2]


def upgrade(data_dir: Path, database_url: str | None, *flags: str) -> dict:
    """Run the README's command against a data dir; its JSON report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    env["P2L_DATA_DIR"] = str(data_dir)
    if database_url:
        env["P2L_DATABASE_URL"] = database_url
    done = subprocess.run(
        [sys.executable, "-m", "app.zoo", "upgrade", "--json", *flags],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def old_reference(tmp_path: Path) -> Path:
    """A reference network other than the bundled one (what an older install ran)."""
    torch.manual_seed(7)
    path = tmp_path / "old-reference.safetensors"
    save_file(weights_to_save(build_model("compact_cnn", 1)), path)
    return path


@pytest.mark.system
def test_upgrade_resigns_what_it_can_lists_the_rest_and_imports_the_bundled_zoo(
    make_client: Callable[..., TestClient],
    data_dir: Path,
    database_url: str | None,
    old_reference: Path,
) -> None:
    old = make_client(
        database_url=database_url, reference_weights=old_reference, import_bundled_zoo=False
    )
    archive = zip_bytes(image_folder_entries(bundled_target_images("fashion")))
    dataset = old.post("/v1/datasets", files={"file": ("fashion.zip", archive)}).json()["id"]
    weights = (BUNDLED_DIR / "sources" / "fashion_9k.safetensors").read_bytes()
    form = {"architecture": "compact_cnn", "num_classes": "10"}
    with_data = old.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", weights)},
        data={**form, "name": "with-dataset", "dataset_id": dataset},
    ).json()
    signature = old.get(f"/v1/datasets/{dataset}/signature?format=safetensors").content
    signature_only = old.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", weights), "signature": ("s", signature)},
        data={**form, "name": "signature-only"},
    ).json()
    # A dataset whose files were lost (a disk restored without them): it and its source are
    # listed as impossible to re-sign, and the rest of the upgrade goes on.
    lost = old.post("/v1/datasets", files={"file": ("lost.zip", archive)}).json()["id"]
    from_lost = old.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", weights)},
        data={**form, "name": "from-lost-dataset", "dataset_id": lost},
    ).json()
    shutil.rmtree(data_dir / "datasets" / lost / "images")
    old_sha = old.get("/v1/reference").json()["weights_sha256"]
    old.__exit__(None, None, None)

    dry = upgrade(data_dir, database_url, "--dry-run")
    assert dry["dry_run"] and [s["id"] for s in dry["resigned_sources"]] == [with_data["id"]]
    report = upgrade(data_dir, database_url)
    bundled_sha = manifest()["reference"]["weights_sha256"]
    assert report["reference_sha256"] == bundled_sha != old_sha
    assert [d["id"] for d in report["resigned_datasets"]] == [dataset]
    assert [d["id"] for d in report["cannot_resign_datasets"]] == [lost]
    assert [s["id"] for s in report["resigned_sources"]] == [with_data["id"]]
    reasons = {s["id"]: s["reason"] for s in report["cannot_resign"]}
    assert reasons[signature_only["id"]] == (
        "registered with a signature only (no stored dataset to re-sign)"
    )
    assert reasons[from_lost["id"]].startswith("its stored dataset cannot be read")
    assert len(reasons) == 2
    assert len(report["imported_bundled"]) == len(manifest()["sources"])
    assert len(dry["imported_bundled"]) == len(report["imported_bundled"])

    again = upgrade(data_dir, database_url)  # idempotent: nothing left to do
    assert not again["resigned_datasets"] and not again["resigned_sources"]
    assert not again["imported_bundled"]
    assert {s["id"] for s in again["cannot_resign"]} == {signature_only["id"], from_lost["id"]}

    new = make_client(database_url=database_url)
    assert new.get("/v1/reference").json()["weights_sha256"] == bundled_sha
    ranking = new.post("/v1/rankings", json={"target_dataset_id": dataset}).json()
    ranked = {r["source_id"] for r in ranking["results"]}
    assert with_data["id"] in ranked and len(ranked) == 1 + len(manifest()["sources"])
    assert {e["source_id"] for e in ranking["excluded"]} == {signature_only["id"], from_lost["id"]}
    # The re-signed source carries the dataset's new signature: the same one a fresh upload
    # of the same images gets.
    fresh = new.post("/v1/datasets", files={"file": ("fashion.zip", archive)}).json()["id"]
    by_fresh = new.post("/v1/rankings", json={"target_dataset_id": fresh}).json()["results"]
    nearest = min(by_fresh, key=lambda r: r["distance"])
    assert nearest["source_id"] == with_data["id"]
    assert nearest["distance"] == pytest.approx(0, abs=1e-5)


@pytest.mark.system
def test_export_target_names_the_targets_it_knows(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.zoo", "export-target", "nope", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "no bundled target 'nope'" in done.stderr
    assert "fashion" in done.stderr and not list(tmp_path.iterdir())
