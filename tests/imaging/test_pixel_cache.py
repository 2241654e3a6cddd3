"""The decoded-pixel cache with real uploads, real fine-tune jobs and a real store."""

import errno
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.imaging import pixel_cache
from app.imaging.loading import load_all_pixels
from app.jobs.service import sweep_unowned_artifacts
from app.services.datasets import IMAGES_DIR, image_files
from app.store import ArtifactStore, LocalArtifactStore
from app.worker import run_next_job
from tests.archives import fashion_mnist_images, image_folder_entries, zip_bytes
from tests.storage.test_object_store import MOTO_SERVER, endpoint, object_store, url

__all__ = ["endpoint", "url"]  # fixtures of the object-store tests, used here too

SIZE = 32  # the bundled reference's input size, and the bundled sources'
PER_CLASS = 8


@pytest.fixture(scope="module")
def archive() -> bytes:
    """A small garments archive (5 classes, PER_CLASS images each), stored in archive order
    that is not sorted, so a cache in upload order would not match a fine-tune's order."""
    images = fashion_mnist_images(per_class=PER_CLASS)
    entries = image_folder_entries(images)
    return zip_bytes(dict(reversed(list(entries.items()))))


def upload(client: TestClient, archive: bytes) -> str:
    response = client.post("/v1/datasets", files={"file": ("garments.zip", archive)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def run_finetune_job(client: TestClient, settings: Settings, dataset_id: str) -> dict:
    """Queue a one-epoch fine-tune of the best source and run it here, as a worker would;
    the job's record once it ended."""
    body = {"target_dataset_id": dataset_id, "source_id": "best", "schedule": "manual",
            "epochs": 1, "patience": None}  # fmt: skip
    response = client.post("/v1/finetunes", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert run_next_job(settings, "test-worker") == job_id
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] in ("succeeded", "failed"), job
    return dict(job)


def worker_settings(data_dir: Path, max_bytes: int) -> Settings:
    return Settings(
        _env_file=None, data_dir=data_dir, start_worker=False, pixel_cache_max_bytes=max_bytes
    )


def entries(data_dir: Path, dataset_id: str | None = None) -> list[pixel_cache.CacheEntry]:
    found = pixel_cache.list_entries(LocalArtifactStore(data_dir))
    return [e for e in found if dataset_id is None or e.dataset_id == dataset_id]


def images_dir(data_dir: Path, dataset_id: str) -> Path:
    return data_dir / "datasets" / dataset_id / IMAGES_DIR


def decoded(data_dir: Path, dataset_id: str) -> np.ndarray:
    """The dataset's pixels decoded now, in the order fine-tunes use."""
    files = image_files(images_dir(data_dir, dataset_id))
    return load_all_pixels([path for name in sorted(files) for path in files[name]], SIZE)


def cached(data_dir: Path, entry: pixel_cache.CacheEntry) -> np.ndarray:
    return np.load(data_dir / entry.key / pixel_cache.PIXELS_FILE)


def spoil_images(data_dir: Path, dataset_id: str) -> None:
    """Overwrite every stored image file with bytes that decode to nothing."""
    for path in images_dir(data_dir, dataset_id).rglob("*"):
        if path.is_file():
            path.write_bytes(b"not an image any more")


@pytest.mark.system
def test_upload_caches_its_pixels_and_a_finetune_decodes_nothing(
    make_client: Callable[..., TestClient], data_dir: Path, archive: bytes
) -> None:
    client = make_client()
    dataset_id = upload(client, archive)
    (entry,) = entries(data_dir, dataset_id)
    assert entry.size == SIZE
    # Exactly what decoding the stored files gives, in dataset_files order.
    np.testing.assert_array_equal(cached(data_dir, entry), decoded(data_dir, dataset_id))

    spoil_images(data_dir, dataset_id)  # from here on, decoding a file would fail the job
    job = run_finetune_job(client, worker_settings(data_dir, 2 * 1024**3), dataset_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["train_images"] > 0


@pytest.mark.system
def test_without_the_cache_a_finetune_decodes_and_then_writes_the_entry(
    make_client: Callable[..., TestClient], data_dir: Path, archive: bytes
) -> None:
    client = make_client(pixel_cache_max_bytes=0)  # an upload that caches nothing
    dataset_id = upload(client, archive)
    assert entries(data_dir) == []
    expected = decoded(data_dir, dataset_id)

    # The cache off in the worker too: it needs the files (spoiling them fails the job).
    spoiled = upload(client, archive)
    spoil_images(data_dir, spoiled)
    job = run_finetune_job(client, worker_settings(data_dir, 0), spoiled)
    assert job["status"] == "failed"
    assert entries(data_dir) == []

    # On: the first job decodes once and writes the entry; the next one reads it.
    settings = worker_settings(data_dir, 2 * 1024**3)
    assert run_finetune_job(client, settings, dataset_id)["status"] == "succeeded"
    (entry,) = entries(data_dir, dataset_id)
    np.testing.assert_array_equal(cached(data_dir, entry), expected)
    spoil_images(data_dir, dataset_id)
    job = run_finetune_job(client, settings, dataset_id)
    assert job["status"] == "succeeded", job["error"]
    assert entries(data_dir, dataset_id) == [entry]


@pytest.mark.system
def test_a_damaged_entry_is_ignored_and_rebuilt(
    make_client: Callable[..., TestClient], data_dir: Path, archive: bytes
) -> None:
    client = make_client()
    dataset_id = upload(client, archive)
    (damaged,) = entries(data_dir, dataset_id)
    expected = cached(data_dir, damaged)
    pixels_file = data_dir / damaged.key / pixel_cache.PIXELS_FILE
    pixels_file.write_bytes(pixels_file.read_bytes()[:-100])  # truncated

    job = run_finetune_job(client, worker_settings(data_dir, 2 * 1024**3), dataset_id)
    assert job["status"] == "succeeded", job["error"]
    (rebuilt,) = entries(data_dir, dataset_id)
    assert rebuilt.key != damaged.key
    np.testing.assert_array_equal(cached(data_dir, rebuilt), expected)


@pytest.mark.system
def test_the_bound_evicts_least_recently_used_and_refuses_oversized_entries(
    make_client: Callable[..., TestClient], data_dir: Path, archive: bytes
) -> None:
    # Room for two entries of this archive, not three (each is its pixels, plus headers).
    bound = pixel_cache.payload_bytes(5 * PER_CLASS, SIZE) * 5 // 2
    client = make_client(pixel_cache_max_bytes=bound)
    first = upload(client, archive)
    second = upload(client, archive)
    assert {e.dataset_id for e in entries(data_dir)} == {first, second}

    time.sleep(0.05)  # distinct modification times, whatever the file system's resolution
    # A job reads the first dataset's entry: the second's is now the least recently used.
    job = run_finetune_job(client, worker_settings(data_dir, bound), first)
    assert job["status"] == "succeeded", job["error"]
    time.sleep(0.05)
    third = upload(client, archive)
    assert {e.dataset_id for e in entries(data_dir)} == {first, third}
    assert pixel_cache.total_bytes(LocalArtifactStore(data_dir)) <= bound


@pytest.mark.system
def test_an_entry_beyond_the_bound_is_not_written(
    make_client: Callable[..., TestClient], data_dir: Path, archive: bytes
) -> None:
    client = make_client(pixel_cache_max_bytes=pixel_cache.payload_bytes(5 * PER_CLASS, SIZE) - 1)
    dataset_id = upload(client, archive)
    assert entries(data_dir) == []
    # Nor by a job: it decodes, as without a cache.
    settings = worker_settings(data_dir, pixel_cache.payload_bytes(5 * PER_CLASS, SIZE) - 1)
    assert run_finetune_job(client, settings, dataset_id)["status"] == "succeeded"
    assert entries(data_dir) == []


@pytest.mark.api
def test_deleting_a_dataset_deletes_its_entries(
    make_client: Callable[..., TestClient], data_dir: Path, archive: bytes
) -> None:
    client = make_client()
    doomed, kept = upload(client, archive), upload(client, archive)
    assert len(entries(data_dir, doomed)) == 1
    assert client.delete(f"/v1/datasets/{doomed}").status_code == 204
    assert entries(data_dir, doomed) == []
    assert len(entries(data_dir, kept)) == 1


@pytest.mark.api
def test_entries_of_datasets_that_are_gone_are_swept(
    make_client: Callable[..., TestClient], data_dir: Path, archive: bytes
) -> None:
    """An entry left behind by a crash (no dataset row) goes at the next start-up sweep."""
    client = make_client()
    kept = upload(client, archive)
    store = LocalArtifactStore(data_dir)
    write_entry(store, "0badc0ffee", [f"a/{i}.png" for i in range(4)], 1)
    state = client.app.state.service
    with state.sessions() as session:
        assert sweep_unowned_artifacts(session, store, older_than_seconds=3600) == 0
        assert sweep_unowned_artifacts(session, store, older_than_seconds=-60) == 1
    assert [e.dataset_id for e in entries(data_dir)] == [kept]


class NoRoomForTheCache(LocalArtifactStore):
    """The store seam (as in test_hardening_api): every pixel cache publish finds the disk
    full; everything else publishes as usual."""

    def publish(self, staging: Path, key: str) -> str:
        if key.startswith(f"{pixel_cache.PREFIX}/"):
            raise OSError(errno.ENOSPC, "No space left on device", str(staging))
        return super().publish(staging, key)


@pytest.mark.api
def test_a_cache_the_store_refuses_does_not_fail_the_upload(
    client: TestClient, data_dir: Path, archive: bytes
) -> None:
    client.app.state.service.store = NoRoomForTheCache(data_dir)
    dataset_id = upload(client, archive)
    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 200
    assert entries(data_dir) == []
    assert not list((data_dir / "tmp").iterdir())  # the abandoned entry's bytes are gone


def write_entry(
    store: ArtifactStore, dataset_id: str, names: list[str], fill: int
) -> pixel_cache.CacheEntry:
    """Publish an entry of ``names`` whose pixels all equal ``fill``."""
    staging = store.new_staging_dir()
    writer = pixel_cache.EntryWriter(staging, names, SIZE)
    writer(np.full((len(names), SIZE, SIZE, 3), fill, dtype=np.uint8))
    key, _ = pixel_cache.publish_entry(store, staging, writer, dataset_id)
    (entry,) = [e for e in pixel_cache.list_entries(store) if e.key == key]
    return entry


@pytest.mark.unit
def test_racing_writers_the_last_publish_wins(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    names = [f"a/{i}.png" for i in range(4)]
    older = write_entry(store, "d1", names, 1)
    newer = write_entry(store, "d1", names, 2)
    # Both published; the older writer settles last and must not remove the newer entry.
    pixel_cache.settle(store, older, 10**9)
    assert pixel_cache.entries_of(store, "d1", SIZE) == [newer, older]
    read = pixel_cache.read_entry(store, "d1", SIZE, names)
    assert read is not None and int(read.max()) == 2
    pixel_cache.settle(store, newer, 10**9)
    assert pixel_cache.entries_of(store, "d1", SIZE) == [newer]
    # Other files (a name changed): the entry is not theirs.
    assert pixel_cache.read_entry(store, "d1", SIZE, [*names[:-1], "a/x.png"]) is None


@pytest.mark.system
@pytest.mark.skipif(MOTO_SERVER is None, reason="moto_server is not installed")
def test_two_machines_share_entries_in_an_object_store(
    url: str, endpoint: str, tmp_path: Path
) -> None:
    here, there = (
        object_store(url, tmp_path / "here", endpoint),
        object_store(url, tmp_path / "there", endpoint),
    )
    names = [f"a/{i}.png" for i in range(4)]
    first = write_entry(here, "d1", names, 1)
    # S3 times have one-second steps: a pause keeps recency unambiguous.
    time.sleep(1.1)
    second = write_entry(here, "d2", names, 2)
    time.sleep(1.1)
    read = pixel_cache.read_entry(there, "d1", SIZE, names)  # fetched, and marked used
    assert read is not None and int(read.min()) == 1
    time.sleep(1.1)
    third = write_entry(here, "d3", names, 3)
    evicted = pixel_cache.settle(here, third, first.nbytes * 5 // 2)
    assert evicted == [second.key]  # the least recently used, by the other machine's read
    assert pixel_cache.delete_entries(there, "d1") == 1
    assert [e.key for e in pixel_cache.list_entries(here)] == [third.key]


@pytest.mark.unit
def test_a_new_entry_evicted_at_once_leaves_the_job_its_pixels(tmp_path: Path) -> None:
    """Another process's eviction may delete an entry as soon as it is published."""
    store = LocalArtifactStore(tmp_path)
    names = [f"a/{i}.png" for i in range(4)]
    staging = store.new_staging_dir()
    writer = pixel_cache.EntryWriter(staging, names, SIZE)
    writer(np.full((len(names), SIZE, SIZE, 3), 7, dtype=np.uint8))
    key, pixels = pixel_cache.publish_entry(store, staging, writer, "d1")
    store.delete(key)
    assert pixel_cache.list_entries(store) == []
    assert pixels.shape == (4, SIZE, SIZE, 3) and (np.asarray(pixels) == 7).all()
