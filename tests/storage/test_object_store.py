"""The object-store backend against a real S3-compatible server (moto_server, local)."""

import logging
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.finetune.export import bundle_version
from app.jobs.service import sweep_unowned_artifacts
from app.main import create_app
from app.models import Dataset
from app.p2l.signature import DatasetSignature
from app.services.datasets import SIGNATURE_FILE, stored_signature
from app.store import LocalArtifactStore, ObjectArtifactStore, make_store
from app.unit_of_work import unit_of_work
from tests.archives import fashion_mnist_images
from tests.helpers import get_job, run_queued_jobs, start_job, upload_garments
from tests.servers import free_port
from tests.storage.test_unit_of_work import row

s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install s3fs)")

BUCKET = "p2l-test"
MOTO_SERVER = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
    "moto_server"
)
pytestmark = pytest.mark.skipif(
    MOTO_SERVER is None, reason="moto_server is not installed (pip install 'moto[server]')"
)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server with one bucket, and the AWS_* variables its clients need."""
    assert MOTO_SERVER is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        try:
            deadline = time.monotonic() + 120  # a hang guard: moto_server starts
            while True:
                try:
                    urllib.request.urlopen(url, timeout=1).close()
                    break
                except (urllib.error.URLError, OSError):
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"moto_server did not answer on {url}")
                    time.sleep(0.2)
            s3fs.S3FileSystem(client_kwargs={"endpoint_url": url}).mkdir(BUCKET)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=10)


@pytest.fixture
def url() -> str:
    """A fresh prefix per test, so tests share the server but not their objects."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex}"


def object_store(url: str, scratch: Path, endpoint: str) -> ObjectArtifactStore:
    """A store as one machine sees it: ``scratch`` is its own data dir (cache and tmp)."""
    return ObjectArtifactStore(url, scratch, client_kwargs={"endpoint_url": endpoint})


@pytest.fixture
def store(url: str, tmp_path: Path, endpoint: str) -> ObjectArtifactStore:
    return object_store(url, tmp_path / "here", endpoint)


def stage(store: ObjectArtifactStore, files: dict[str, bytes]) -> Path:
    staging = store.new_staging_dir()
    for name, data in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    return staging


def remote_files(store: ObjectArtifactStore) -> list[str]:
    return sorted(store.fs.find(store.root))


@pytest.mark.system
def test_published_files_are_readable_here_and_on_another_machine(
    store: ObjectArtifactStore, url: str, tmp_path: Path, endpoint: str
) -> None:
    files = {"a.bin": b"abc", "images/cat/1.png": b"\x89PNG"}
    staging = stage(store, files)
    assert store.publish(staging, "datasets/one") == f"{url}/datasets/one"
    assert not staging.exists()
    assert list(store.tmp.iterdir()) == []
    local = store.path("datasets/one")
    assert local.is_relative_to(store.cache)
    assert {n: (local / n).read_bytes() for n in files} == files

    # Another machine: an empty cache, filled on first use, whole.
    there = object_store(url, tmp_path / "there", endpoint)
    fetched = there.path("datasets/one")
    assert fetched.is_relative_to(there.cache)
    assert {n: (fetched / n).read_bytes() for n in files} == files
    assert list(there.tmp.iterdir()) == []
    # Its mtime is the publish time, which the start-up sweep ages artifacts by.
    assert abs(fetched.stat().st_mtime - there.published_at("datasets/one")) < 1
    assert abs(there.published_at("datasets/one") - time.time()) < 60

    assert not there.path("datasets/none").exists()  # like a missing local path


@pytest.mark.system
def test_publishing_an_existing_key_is_refused(store: ObjectArtifactStore) -> None:
    store.publish(stage(store, {"w.bin": b"1"}), "models/m")
    again = stage(store, {"w.bin": b"2", "extra.bin": b"3"})
    with pytest.raises(FileExistsError):
        store.publish(again, "models/m")
    assert remote_files(store) == [f"{store.root}/models/m/w.bin"]
    assert (store.path("models/m") / "w.bin").read_bytes() == b"1"
    # A key is a folder, not a name prefix: models/m does not hide models/m2, nor see it.
    store.publish(again, "models/m2")
    assert store.keys_under("models") == {"models/m", "models/m2"}


@pytest.mark.system
def test_concurrent_first_reads_all_see_the_whole_artifact(
    store: ObjectArtifactStore, url: str, tmp_path: Path, endpoint: str
) -> None:
    files = {f"images/{n}.png": bytes([n]) * 1000 for n in range(20)}
    store.publish(stage(store, files), "datasets/big")
    there = object_store(url, tmp_path / "there", endpoint)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: there.path("datasets/big"), range(4)))
    for local in paths:
        assert {n: (local / n).read_bytes() for n in files} == files
    assert list(there.tmp.iterdir()) == []  # the losers' downloads are gone


@pytest.mark.system
def test_keys_cannot_escape_the_root(store: ObjectArtifactStore) -> None:
    for key in ("../outside", "/etc/passwd", "a/../../b", "", "a//b"):
        with pytest.raises(ValueError, match="escapes the store"):
            store.path(key)


@pytest.mark.system
def test_write_file_delete_and_keys_under(
    store: ObjectArtifactStore, url: str, tmp_path: Path, endpoint: str
) -> None:
    there = object_store(url, tmp_path / "there", endpoint)
    assert store.write_file("x/file.bin", b"1") == f"{url}/x/file.bin"
    assert store.path("x/file.bin").read_bytes() == b"1"
    assert there.path("x/file.bin").read_bytes() == b"1"

    # Re-signing writes into a published folder: the cached folder here stays whole.
    store.publish(stage(store, {"sig.bin": b"old", "w.bin": b"w"}), "sources/s")
    assert (store.path("sources/s") / "sig.bin").read_bytes() == b"old"
    store.write_file("sources/s/sig.bin", b"new")
    assert (store.path("sources/s") / "sig.bin").read_bytes() == b"new"
    assert (there.path("sources/s") / "sig.bin").read_bytes() == b"new"
    assert (there.path("sources/s") / "w.bin").read_bytes() == b"w"

    store.publish(stage(store, {"a": b"a"}), "sources/t")
    assert store.keys_under("sources") == {"sources/s", "sources/t"}
    assert there.keys_under("sources") == {"sources/s", "sources/t"}
    assert store.keys_under("nothing") == set()

    store.delete("sources/s")
    store.delete("sources/s")  # deleting twice is fine
    assert not store.path("sources/s").exists()
    assert there.keys_under("sources") == {"sources/t"}
    assert not store.fs.exists(f"{store.root}/sources/s")
    assert list(store.tmp.iterdir()) == []


@pytest.mark.system
def test_a_failed_commit_leaves_no_remote_object(
    session: Session, store: ObjectArtifactStore
) -> None:
    with unit_of_work(session, store):
        session.add(row("c" * 32))
    with pytest.raises(IntegrityError), unit_of_work(session, store) as work:
        staging = work.stage()
        (staging / "weights.bin").write_bytes(b"\x00" * 64)
        work.publish(staging, "models/c")
        assert remote_files(store) == [f"{store.root}/models/c/weights.bin"]
        session.add(row("c" * 32))  # same primary key: the commit fails
    assert remote_files(store) == []
    assert not store.path("models/c").exists()
    assert list(store.tmp.iterdir()) == []


def dataset_row(key: str) -> Dataset:
    return Dataset(
        id=uuid.uuid4().hex, name="d", num_images=1, class_counts={"a": 1}, rejected=[],
        feature_dim=4, reference_sha256="0" * 64, artifact_key=key,
    )  # fmt: skip


@pytest.mark.system
def test_startup_sweep_removes_unreferenced_objects(
    session: Session, store: ObjectArtifactStore, url: str, tmp_path: Path, endpoint: str
) -> None:
    for key in ("datasets/owned", "datasets/orphan", "models/orphan"):
        store.publish(stage(store, {"f.bin": key.encode()}), key)
    session.add(dataset_row("datasets/owned"))
    session.commit()

    # Another machine, whose cache is empty, sweeps at start-up; recent orphans are spared.
    there = object_store(url, tmp_path / "there", endpoint)
    assert sweep_unowned_artifacts(session, there, older_than_seconds=3600) == 0
    assert sweep_unowned_artifacts(session, there, older_than_seconds=-60) == 2
    assert remote_files(store) == [f"{store.root}/datasets/owned/f.bin"]
    assert (store.path("datasets/owned") / "f.bin").read_bytes() == b"datasets/owned"


@pytest.mark.system
def test_make_store_picks_the_backend(tmp_path: Path, endpoint: str) -> None:
    data = tmp_path / "data"
    assert isinstance(make_store(Settings(data_dir=data)), LocalArtifactStore)
    local = make_store(Settings(data_dir=data, store_url=(tmp_path / "shared").as_uri()))
    assert isinstance(local, LocalArtifactStore)
    assert local.root == (tmp_path / "shared").resolve()
    remote = make_store(
        Settings(data_dir=data, store_url=f"s3://{BUCKET}/made", s3_endpoint_url=endpoint)
    )
    assert isinstance(remote, ObjectArtifactStore)
    assert remote.uri("datasets/x") == f"s3://{BUCKET}/made/datasets/x"
    remote.write_file("probe.bin", b"ok")  # the endpoint setting reaches the client
    assert remote.path("probe.bin").read_bytes() == b"ok"
    remote.delete("probe.bin")
    with pytest.raises(ValueError, match="P2L_STORE_URL"):
        make_store(Settings(data_dir=data, store_url="ftp://host/x"))


@pytest.mark.unit
def test_file_urls_work_through_fsspec_too(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    store = ObjectArtifactStore(root.as_uri(), tmp_path / "scratch", auto_mkdir=True)
    store.publish(stage(store, {"a/b.bin": b"b"}), "datasets/f")
    assert (root / "datasets/f/a/b.bin").read_bytes() == b"b"
    assert (store.path("datasets/f") / "a/b.bin").read_bytes() == b"b"
    assert store.keys_under("datasets") == {"datasets/f"}
    store.delete("datasets/f")
    assert not (root / "datasets/f").exists()


def signature_bytes(reference_sha256: str) -> bytes:
    """A small valid signature made by the named reference network."""
    mean = np.linspace(0.1, 1.0, 8, dtype=np.float32)
    return DatasetSignature(
        class_names=["a", "b"],
        class_counts=np.array([3, 4]),
        mean=mean,
        class_means=np.stack([mean, mean]),
        variance=np.ones(8, np.float32),
        reference_sha256=reference_sha256,
    ).to_bytes()


@pytest.mark.system
def test_a_signature_re_signed_elsewhere_is_fetched_again(
    url: str, tmp_path: Path, endpoint: str
) -> None:
    here, there = (
        object_store(url, tmp_path / "here", endpoint),
        object_store(url, tmp_path / "there", endpoint),
    )
    here.publish(stage(here, {SIGNATURE_FILE: signature_bytes("old" * 10)}), "datasets/d")
    assert stored_signature(there, "datasets/d", "old" * 10).reference_sha256 == "old" * 10
    here.write_file(f"datasets/d/{SIGNATURE_FILE}", signature_bytes("new" * 10))  # an upgrade
    # ``there`` still caches the old file; the row now names the new network.
    assert stored_signature(there, "datasets/d", "new" * 10).reference_sha256 == "new" * 10


@pytest.mark.system
def test_a_models_export_is_stored_once_for_every_machine(
    url: str, tmp_path: Path, endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Exports live in the bucket under their model's key. Three API machines on one
    database and one bucket, each with its own data dir: one that loaded the model first
    (and cached its folder before any export existed), one that builds the export, one that
    never saw the model: the second export anywhere is served from the bucket, the machine
    that fetched only the export still predicts with the model, and deleting it anywhere
    deletes the export too."""
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    options = {"database_url": database, "store_url": url, "s3_endpoint_url": endpoint}
    with ExitStack() as stack:
        early, builder, newcomer = (
            stack.enter_context(
                TestClient(
                    create_app(Settings(_env_file=None, data_dir=tmp_path / name,
                                        start_worker=False, **options)),
                    raise_server_exceptions=False,
                )
            )
            for name in ("early", "builder", "newcomer")
        )  # fmt: skip
        dataset = upload_garments(early, per_class=4)
        source = next(
            s["id"]
            for s in early.get("/v1/sources", params={"page_size": 200}).json()["items"]
            if s["name"] == "fashion_9k"
        )
        job = start_job(early, target_dataset_id=dataset, source_id=source,
                        schedule="manual", epochs=1, patience=None)  # fmt: skip
        run_queued_jobs(early)
        model_id = get_job(early, job["id"])["model_id"]
        path = f"/v1/models/{model_id}"
        image = [("files", ("shirt.png", fashion_mnist_images(per_class=1)["tshirt"][0]))]
        assert early.post(f"{path}/predict", files=image).status_code == 200  # caches it

        with caplog.at_level(logging.INFO, logger="p2l.models"):
            built = builder.get(f"{path}/export")
        assert built.status_code == 200, built.text
        key = f"models/{model_id}/exports/onnx-{bundle_version()}"
        store = object_store(url, tmp_path / "probe", endpoint)
        assert store.keys_under(f"models/{model_id}/exports") == {key}
        with caplog.at_level(logging.INFO, logger="p2l.models"):
            for client in (newcomer, early, builder):
                again = client.get(f"{path}/export")
                assert again.status_code == 200 and again.content == built.content
        built_logs = [r for r in caplog.records if "export built" in r.getMessage()]
        assert len(built_logs) == 1, built_logs
        # The newcomer fetched the model's folder whole, weights with the export.
        assert newcomer.post(f"{path}/predict", files=image).status_code == 200

        assert newcomer.delete(path).status_code == 204
        assert store.keys_under(f"models/{model_id}") == set()
        assert not [name for name in remote_files(store) if model_id in name]
        assert builder.get(f"{path}/export").status_code == 404
