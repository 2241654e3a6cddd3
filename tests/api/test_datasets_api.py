"""Dataset upload, validation, listing and deletion through HTTP, on SQLite and PostgreSQL."""

import asyncio
import io
import os
import struct
import tarfile
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.imaging.archive import REJECTION_KINDS
from app.main import _supervise
from app.models import Dataset
from app.store import tmp_owner
from tests.archives import (
    chained_long_name_tar,
    clipart_images,
    fashion_mnist_images,
    huge_png,
    image_folder_entries,
    png_bytes,
    tar_bomb,
    tar_bytes,
    zip_bomb,
    zip_bytes,
    zip_with_special_entries,
)
from tests.helpers import (
    PROBLEM,
    dead_pid,
)


@pytest.fixture
def service(make_client: Callable[..., TestClient], database_url: str | None) -> TestClient:
    """The service on each storage backend."""
    return make_client(database_url=database_url)


def upload(
    client: TestClient,
    data: bytes,
    filename: str = "data.zip",
    headers: dict[str, str] | None = None,
    **form: str,
):
    """POST an archive to /v1/datasets."""
    return client.post("/v1/datasets", files={"file": (filename, data)}, data=form, headers=headers)


def stored_files(data_dir: Path) -> list[Path]:
    """Every dataset artifact file, staging included (the bundled zoo's sources aside)."""
    return sorted(
        p for folder in ("datasets", "tmp") for p in (data_dir / folder).rglob("*") if p.is_file()
    )


def assert_nothing_stored(client: TestClient, data_dir: Path) -> None:
    """No dataset row and no artifact file (staging included) exist."""
    assert client.get("/v1/datasets").json()["items"] == []
    assert stored_files(data_dir) == []


@pytest.mark.api
def test_upload_real_five_class_archive(service: TestClient) -> None:
    images = fashion_mnist_images(per_class=50)
    response = upload(service, zip_bytes(image_folder_entries(images)), name="garments")

    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/datasets/{body['id']}"
    assert body["name"] == "garments"
    assert body["num_images"] == 250 and body["num_classes"] == 5
    assert body["classes"] == [{"name": n, "count": 50} for n in sorted(images)]
    assert body["rejected"] == []
    reference = service.get("/v1/reference").json()
    assert body["signature"]["feature_dim"] == reference["feature_dim"]
    assert body["signature"]["reference_sha256"] == reference["weights_sha256"]

    signature = service.get(f"/v1/datasets/{body['id']}/signature").json()
    dim = reference["feature_dim"]
    assert signature["n"] == 250
    assert len(signature["mean"]) == dim and len(signature["variance"]) == dim
    assert [c["count"] for c in signature["classes"]] == [50] * 5
    class_means = np.array([c["mean"] for c in signature["classes"]])
    # The overall mean is the count-weighted mean of the class means; features are post-ReLU.
    assert np.allclose(class_means.mean(0), signature["mean"], atol=1e-5)
    assert (np.array(signature["mean"]) >= 0).all()
    assert (np.array(signature["variance"]) >= 0).all()
    # Different garments land in different places of feature space.
    assert np.linalg.norm(class_means[0] - class_means[1]) > 1e-3

    assert service.get(f"/v1/datasets/{body['id']}").json()["num_images"] == 250


@pytest.mark.api
@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_tar_archives_with_one_top_folder(client: TestClient, compression: str) -> None:
    images = fashion_mnist_images(per_class=4)
    archive = tar_bytes(image_folder_entries(images, top="garments"), compression)
    response = upload(client, archive, filename=f"garments.tar.{compression}")
    assert response.status_code == 201, response.text
    assert [c["count"] for c in response.json()["classes"]] == [4] * 5


@pytest.mark.api
def test_transparent_clipart_is_composited_and_kept(client: TestClient) -> None:
    images = clipart_images()
    response = upload(client, zip_bytes(image_folder_entries(images)))
    assert response.status_code == 201, response.text
    assert {c["name"]: c["count"] for c in response.json()["classes"]} == {
        name: len(files) for name, files in images.items()
    }


@pytest.mark.api
def test_hostile_archive_keeps_good_images_and_explains_the_rest(
    service: TestClient, data_dir: Path
) -> None:
    good = image_folder_entries(fashion_mnist_images(per_class=3))
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    whole = png_bytes(Image.fromarray(noise))
    corrupt = whole[: len(whole) // 2]
    members = {
        **good,
        "../evil.png": good["dress/0000.png"],
        "tshirt/corrupt.png": corrupt,
        "tshirt/notes.txt": b"just some text, not an image",
        "trouser/huge.png": huge_png(100_000_000),
    }
    archive = zip_bytes(members, symlinks={"dress/link.png": "/etc/passwd"})

    response = upload(service, archive)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_images"] == 15
    reasons = {r["path"]: r["reason"] for r in body["rejected"]}
    assert set(reasons) == {
        "../evil.png",
        "tshirt/corrupt.png",
        "tshirt/notes.txt",
        "trouser/huge.png",
        "dress/link.png",
    }
    assert "path traversal" in reasons["../evil.png"]
    assert "link" in reasons["dress/link.png"]
    assert "corrupt" in reasons["tshirt/corrupt.png"]
    assert "not a decodable image" in reasons["tshirt/notes.txt"]
    assert "decompression-bomb" in reasons["trouser/huge.png"]
    kinds = {r["path"]: r["kind"] for r in body["rejected"]}
    assert kinds == {
        "../evil.png": "unsafe_path",
        "tshirt/corrupt.png": "corrupt_image",
        "tshirt/notes.txt": "not_an_image",
        "trouser/huge.png": "too_many_pixels",
        "dress/link.png": "link",
    }
    assert body["rejected_total"] == 5
    # Nothing escaped the data dir; only the good images and the signature were written.
    sandbox = data_dir.parent
    assert sorted(p.name for p in sandbox.iterdir()) == ["data"]
    assert not list(sandbox.rglob("evil.png"))
    names = [p.name for p in stored_files(data_dir)]
    assert len(names) == 16 and "signature.safetensors" in names
    assert not {"evil.png", "link.png", "corrupt.png", "notes.txt", "huge.png"} & set(names)


@pytest.mark.api
def test_tar_links_are_never_followed(client: TestClient, data_dir: Path) -> None:
    good = image_folder_entries(fashion_mnist_images(per_class=2))
    archive = tar_bytes(
        good,
        symlinks={"tshirt/sym.png": "/etc/passwd", "../up.png": "x"},
        hardlinks={"dress/hard.png": "/etc/shadow"},
    )
    response = upload(client, archive, filename="x.tar.gz")
    assert response.status_code == 201, response.text
    reasons = {r["path"]: r["reason"] for r in response.json()["rejected"]}
    assert set(reasons) == {"tshirt/sym.png", "dress/hard.png", "../up.png"}
    assert all(p.is_file() and not p.is_symlink() for p in stored_files(data_dir))


@pytest.mark.api
@pytest.mark.parametrize("make_bomb", [zip_bomb, tar_bomb], ids=["zip", "tar.gz"])
def test_compression_bomb_is_refused_and_leaves_nothing(
    service: TestClient, data_dir: Path, make_bomb: Callable[[int], bytes]
) -> None:
    bomb = make_bomb(300 * 1024**2)
    assert len(bomb) < 2 * 1024**2
    response = upload(service, bomb)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert "compression bomb" in response.json()["detail"]
    assert_nothing_stored(service, data_dir)


@pytest.mark.api
def test_expansion_cap_applies_to_honest_archives_too(
    make_client: Callable[..., TestClient], data_dir: Path
) -> None:
    client = make_client(max_uncompressed_bytes=10_000)
    archive = zip_bytes(image_folder_entries(fashion_mnist_images(per_class=20)))
    response = upload(client, archive)
    assert response.status_code == 422
    assert "expands to more than 10,000 bytes" in response.json()["detail"]
    assert_nothing_stored(client, data_dir)


@pytest.mark.api
def test_oversize_upload_is_413_and_leaves_nothing(
    make_client: Callable[..., TestClient], database_url: str | None, data_dir: Path
) -> None:
    client = make_client(database_url=database_url, max_upload_bytes=100_000)
    archive = tar_bytes(image_folder_entries(fashion_mnist_images(per_class=50)), compression="")
    assert len(archive) > 100_000
    response = upload(client, archive, filename="big.tar")
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert "100,000 bytes" in response.json()["detail"]
    assert_nothing_stored(client, data_dir)


@pytest.mark.api
@pytest.mark.parametrize(
    ("entries", "expected", "rejected"),
    [
        ({"only/a.png": png_bytes(Image.new("RGB", (8, 8)))}, "at least 2 class folders", set()),
        ({"a.png": png_bytes(Image.new("RGB", (8, 8)))}, "found: none", {"a.png"}),
        (
            {"cats/x.txt": b"text", "dogs/y.txt": b"text"},
            "found: none",
            {"cats/x.txt", "dogs/y.txt"},
        ),
    ],
    ids=["one-class", "no-folders", "no-images"],
)
def test_unusable_layouts_are_422_with_nothing_left(
    service: TestClient, data_dir: Path, entries: dict[str, bytes], expected: str, rejected: set
) -> None:
    response = upload(service, zip_bytes(entries))
    assert response.status_code == 422
    body = response.json()
    assert response.headers["content-type"] == PROBLEM
    assert expected in body["detail"]
    assert {r["path"] for r in body["rejected"]} == rejected
    assert_nothing_stored(service, data_dir)


@pytest.mark.api
def test_not_an_archive_is_422(client: TestClient, data_dir: Path) -> None:
    response = upload(client, b"this is not an archive at all", filename="data.zip")
    assert response.status_code == 422
    assert "not a readable archive" in response.json()["detail"]
    assert_nothing_stored(client, data_dir)


@pytest.mark.api
def test_missing_file_field_is_a_problem(client: TestClient) -> None:
    response = client.post("/v1/datasets", data={"name": "x"})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert "file" in response.json()["detail"]


@pytest.mark.api
def test_list_paginates_newest_first(service: TestClient) -> None:
    archive = zip_bytes(image_folder_entries(fashion_mnist_images(per_class=2)))
    ids = [upload(service, archive, name=f"d{i}").json()["id"] for i in range(3)]

    first = service.get("/v1/datasets", params={"page_size": 2}).json()
    assert [d["id"] for d in first["items"]] == ids[::-1][:2]
    assert first["next_page_token"]
    second = service.get(
        "/v1/datasets", params={"page_size": 2, "page_token": first["next_page_token"]}
    ).json()
    assert [d["id"] for d in second["items"]] == [ids[0]]
    assert second["next_page_token"] is None

    forged = service.get("/v1/datasets", params={"page_token": "garbage"})
    assert forged.status_code == 400 and forged.headers["content-type"] == PROBLEM
    malformed = service.get("/v1/datasets", params={"page_token": "garbage!"})
    assert malformed.status_code == 422  # outside the documented pattern


@pytest.mark.api
def test_delete_removes_row_and_files(service: TestClient, data_dir: Path) -> None:
    archive = zip_bytes(image_folder_entries(fashion_mnist_images(per_class=2)))
    dataset_id = upload(service, archive).json()["id"]
    assert stored_files(data_dir)

    assert service.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    missing = service.get(f"/v1/datasets/{dataset_id}")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    assert dataset_id in missing.json()["detail"]
    assert service.delete(f"/v1/datasets/{dataset_id}").status_code == 404
    assert_nothing_stored(service, data_dir)


@pytest.mark.api
def test_restart_clears_what_a_dead_process_left(
    make_client: Callable[..., TestClient], data_dir: Path
) -> None:
    client = make_client()
    archive = zip_bytes(image_folder_entries(fashion_mnist_images(per_class=2)))
    kept = upload(client, archive).json()["id"]
    # What a whole-service kill -9 mid-upload leaves, restarted at once: the staging folder
    # of a process that is gone, and a folder published before the commit, with no row.
    crashed = data_dir / "tmp" / f"stage-{tmp_owner(dead_pid())}-crashed"
    (crashed / "images").mkdir(parents=True)
    orphan = data_dir / "datasets" / ("0" * 32)
    orphan.mkdir()
    (orphan / "signature.safetensors").write_bytes(b"partial")
    a_minute_ago = time.time() - 60  # older than a lease (30 s)
    os.utime(orphan, (a_minute_ago, a_minute_ago))
    # What live processes are writing: this one's staging, and a sibling API's dataset
    # published a moment ago, its row not yet committed.
    writing = data_dir / "tmp" / f"stage-{tmp_owner()}-writing"
    (writing / "images").mkdir(parents=True)
    committing = data_dir / "datasets" / ("1" * 32)
    committing.mkdir()

    restarted = make_client()

    assert not crashed.exists() and not orphan.exists()
    assert writing.exists() and committing.exists()
    assert [d["id"] for d in restarted.get("/v1/datasets").json()["items"]] == [kept]


@pytest.mark.api
def test_the_supervisor_sweeps_a_dead_writers_staging_while_running(
    client: TestClient, data_dir: Path
) -> None:
    crashed = data_dir / "tmp" / f"stage-{tmp_owner(dead_pid())}-crashed"
    (crashed / "images").mkdir(parents=True)
    writing = data_dir / "tmp" / f"stage-{tmp_owner()}-writing"
    writing.mkdir()

    async def supervise_until_swept() -> None:
        supervisor = asyncio.create_task(
            _supervise(client.app.state.service, every_seconds=0.01, sweep_every_seconds=0.05)
        )
        for _ in range(500):
            await asyncio.sleep(0.01)
            if not crashed.exists():
                break
        supervisor.cancel()

    asyncio.run(supervise_until_swept())
    assert not crashed.exists() and writing.exists()


def stored_rejections(client: TestClient, dataset_id: str) -> list[dict]:
    """The ``datasets.rejected`` column of a dataset, as stored."""
    with client.app.state.service.sessions() as session:
        return session.get(Dataset, dataset_id).rejected


@pytest.mark.api
def test_rejected_files_are_listed_up_to_the_cap_and_counted_by_kind(
    service: TestClient, data_dir: Path
) -> None:
    good = image_folder_entries(fashion_mnist_images(per_class=2))
    notes = {f"dress/notes-{i}.txt": b"not an image" for i in range(130)}
    hidden = {"dress/.DS_Store": b"\0\0\0\1Bud1", "__MACOSX/dress/._0000.png": b"\0\5\26\7"}
    links = {f"tshirt/link-{i}.png": "/etc/passwd" for i in range(3)}

    response = upload(service, zip_bytes({**good, **notes, **hidden}, symlinks=links))

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_images"] == 10
    assert body["rejected_total"] == 135
    assert body["rejected_counts"] == {"hidden": 2, "link": 3, "not_an_image": 130}
    assert len(body["rejected"]) == 100  # P2L_MAX_REJECTED_LISTED
    assert {r["kind"] for r in body["rejected"]} <= set(body["rejected_counts"])
    assert set(body["rejected_counts"]) <= set(REJECTION_KINDS)
    assert all(r["reason"] for r in body["rejected"])
    assert stored_rejections(service, body["id"]) == body["rejected"]

    # A refused upload's problem answer carries the same capped list and counts.
    refused = upload(service, zip_bytes({**notes, "tshirt/a.txt": b"text"}))
    assert refused.status_code == 422
    problem = refused.json()
    assert len(problem["rejected"]) == 100
    assert problem["rejected_total"] == 131
    assert problem["rejected_counts"] == {"not_an_image": 131}


@pytest.mark.api
def test_a_replayed_upload_answers_what_the_first_did(service: TestClient) -> None:
    good = image_folder_entries(fashion_mnist_images(per_class=2))
    notes = {f"dress/notes-{i}.txt": b"not an image" for i in range(130)}
    links = {f"tshirt/link-{i}.png": "/etc/passwd" for i in range(3)}
    archive = zip_bytes({**good, **notes}, symlinks=links)
    headers = {"Idempotency-Key": "upload-1"}

    first = upload(service, archive, headers=headers)
    again = upload(service, archive, headers=headers)

    assert first.status_code == again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["rejected_total"] == 133 and len(first.json()["rejected"]) == 100
    assert again.json() == first.json()

    # A row stored before the counts were (revision 0005) replays what its list says.
    with service.app.state.service.sessions() as session:
        dataset = session.get(Dataset, first.json()["id"])
        dataset.rejected_counts = dataset.rejected_total = None
        session.commit()
    old = upload(service, archive, headers=headers).json()
    assert old["rejected"] == first.json()["rejected"] and old["rejected_total"] == 100
    assert sum(old["rejected_counts"].values()) == 100


@pytest.mark.api
def test_every_rejection_kind_is_documented_in_the_api(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    described = schemas["RejectedFileOut"]["properties"]["kind"]["description"]
    assert [kind for kind in REJECTION_KINDS if kind not in described] == []


@pytest.mark.api
def test_names_over_the_byte_limit_are_rejected_per_file(service: TestClient) -> None:
    good = image_folder_entries(fashion_mnist_images(per_class=2))
    image = good["dress/0000.png"]
    too_long = {
        "c" * 300 + "/a.png": image,  # class folder above 255 bytes: ENAMETOOLONG on disk
        "tshirt/" + "f" * 300 + ".png": image,
        "é" * 101 + "/a.png": image,  # 101 characters, but 202 bytes
    }
    response = upload(service, zip_bytes({**good, **too_long}))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_images"] == 10 and body["num_classes"] == 5
    assert {r["path"]: r["kind"] for r in body["rejected"]} == dict.fromkeys(
        too_long, "name_too_long"
    )
    assert all("P2L_MAX_NAME_BYTES" in r["reason"] for r in body["rejected"])

    # A path of thousands of bytes (a tar long name) is rejected and echoed shortened.
    deep = "x/" * 3000 + "a.png"
    response = upload(service, tar_bytes({**good, deep: image}), filename="deep.tar.gz")
    assert response.status_code == 201, response.text
    (rejected,) = response.json()["rejected"]
    assert rejected["kind"] == "name_too_long"
    assert len(rejected["path"]) <= 1024 and deep.startswith(rejected["path"].rstrip("…"))


@pytest.mark.api
@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_tar_with_a_32_mib_name_is_refused_in_a_short_answer(
    client: TestClient, data_dir: Path, tar_format: int
) -> None:
    good = image_folder_entries(fashion_mnist_images(per_class=2))
    # Not an image either: it used to be rejected for that and echoed whole (33 MB).
    huge_name = "dress/" + "n" * 32 * 1024**2 + ".txt"
    archive = tar_bytes({**good, huge_name: b"some text"}, tar_format=tar_format)
    assert len(archive) < 200_000

    response = upload(client, archive, filename="names.tar.gz")

    assert response.status_code == 422
    assert len(response.content) < 2000
    assert "tar header of 33,554,4" in response.json()["detail"]
    assert_nothing_stored(client, data_dir)


@pytest.mark.api
def test_encrypted_and_unsupported_zip_entries_are_rejected_per_file(service: TestClient) -> None:
    good = image_folder_entries(fashion_mnist_images(per_class=2))
    image = good["dress/0000.png"]
    archive = zip_with_special_entries(
        good,
        encrypted={"dress/secret.png": image},
        # Deflate64 is what Windows Explorer writes for large files; 77 is no method at all.
        methods={"dress/deflate64.png": (9, image), "dress/odd.png": (77, image)},
    )

    response = upload(service, archive)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_images"] == 10
    rejected = {r["path"]: r for r in body["rejected"]}
    assert rejected["dress/secret.png"]["kind"] == "encrypted"
    assert rejected["dress/deflate64.png"]["kind"] == "unsupported_compression"
    assert "Deflate64" in rejected["dress/deflate64.png"]["reason"]
    assert rejected["dress/odd.png"]["kind"] == "unsupported_compression"


@pytest.mark.api
def test_undecodable_tar_names_are_rejected_and_chained_headers_refused(
    service: TestClient, data_dir: Path
) -> None:
    good = image_folder_entries(fashion_mnist_images(per_class=2))
    latin1 = {"café/a.png": good["dress/0000.png"], "café/b.png": good["dress/0001.png"]}
    archive = tar_bytes({**good, **latin1}, tar_format=tarfile.GNU_FORMAT, encoding="latin-1")

    response = upload(service, archive, filename="old-tool.tar.gz")

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_classes"] == 5
    assert {(r["path"], r["kind"]) for r in body["rejected"]} == {
        ("caf\ufffd/a.png", "invalid_name"),
        ("caf\ufffd/b.png", "invalid_name"),
    }

    # tarfile follows long-name headers recursively; thousands of them are a corrupt archive.
    chained = upload(service, chained_long_name_tar(good), filename="chained.tar")
    assert chained.status_code == 422
    assert "chained" in chained.json()["detail"]


@pytest.mark.api
def test_dataset_name_is_limited_in_utf8_bytes(service: TestClient, data_dir: Path) -> None:
    archive = zip_bytes(image_folder_entries(fashion_mnist_images(per_class=2)))

    refused = upload(service, archive, name="é" * 150)  # 150 characters, 300 bytes
    assert refused.status_code == 422
    assert refused.headers["content-type"] == PROBLEM
    assert "P2L_MAX_NAME_BYTES" in refused.json()["detail"]
    assert_nothing_stored(service, data_dir)

    fits = upload(service, archive, name="é" * 100)
    assert fits.status_code == 201 and fits.json()["name"] == "é" * 100
    # Without a name the file's name is used, cut to the limit.
    from_file = upload(service, archive, filename="ü" * 300 + ".zip")
    assert from_file.status_code == 201 and from_file.json()["name"] == "ü" * 100


def declare_entries(archive: bytes, count: int) -> bytes:
    """The zip with its end of central directory record claiming ``count`` entries."""
    at = archive.rindex(b"PK\x05\x06")
    return archive[: at + 8] + struct.pack("<HH", count, count) + archive[at + 12 :]


@pytest.mark.api
def test_zip_entry_count_is_refused_before_zipfile_reads_the_directory(
    make_client: Callable[..., TestClient], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(max_archive_members=10)
    image = png_bytes(Image.new("RGB", (8, 8)))
    honest = zip_bytes({f"class{i % 2}/{i}.png": image for i in range(11)})
    # zipfile reads every entry the central directory holds, whatever the record says.
    lying = declare_entries(honest, 1)
    assert len(zipfile.ZipFile(io.BytesIO(lying)).infolist()) == 11
    opened: list[object] = []
    real_zipfile = zipfile.ZipFile

    def spy(*args: object, **kwargs: object) -> zipfile.ZipFile:
        opened.append(args)
        return real_zipfile(*args, **kwargs)

    monkeypatch.setattr(zipfile, "ZipFile", spy)
    for archive in (honest, lying):
        response = upload(client, archive)
        assert response.status_code == 422, response.text
        assert "more than 10 members" in response.json()["detail"]
    assert opened == []
    assert_nothing_stored(client, data_dir)
    # At the cap, the archive is read as before.
    fits = zip_bytes(image_folder_entries(fashion_mnist_images(per_class=2)))
    assert upload(client, fits).status_code == 201 and opened


@pytest.mark.system
def test_a_zip_of_many_empty_entries_is_refused_in_little_memory(client: TestClient) -> None:
    # 200,000 entries in 18 MB (a ZIP64 archive); zipfile would hold ~550 bytes for each.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(200_000):
            archive.writestr(f"d/{i:06d}", b"")
    data = buffer.getvalue()

    # Traced (Python) allocations, this thread's and the server's: a peak of the process's
    # RSS would say nothing once an earlier test had peaked higher.
    tracemalloc.start()
    try:
        response = upload(client, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 422
    assert "more than 50,000 members" in response.json()["detail"]
    assert peak < 100 * 1024**2, f"{peak:,} bytes"
