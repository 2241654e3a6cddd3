"""Issue #23's input defects: zip member names zipfile hides or chokes on, unbounded strings,
unknown fields, a leaked install path, a fine-tune started on a full disk. Each test failed
on the code before the fix."""

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.imaging.archive import ArchiveLimits, extract_image_folder
from tests.archives import fashion_mnist_images, image_folder_entries, zip_with_raw_names

# --- 8, 9. Zip member names: flagged UTF-8 but not UTF-8; a NUL byte zipfile cuts off ------


# Stored names (bytes, as long as "dress/xx.png") and what each member's rejection says.
NOT_UTF8 = (b"dress/\xff\xfe.png", ("dress/\ufffd\ufffd.png", "invalid_name"))
NUL = (b"dress/y\x00.png", ("dress/y\ufffd.png", "unsafe_path"))  # zipfile: "dress/y"


def hostile_names_zip(*raw_names: bytes) -> bytes:
    """Five garment classes of two images, plus one image per raw name, stored under it
    (flagged UTF-8)."""
    good = image_folder_entries(fashion_mnist_images(per_class=2))
    image = good["dress/0000.png"]
    placeholders = [f"dress/{i:02d}.png" for i in range(len(raw_names))]
    return zip_with_raw_names(
        {**good, **dict.fromkeys(placeholders, image)},
        dict(zip(placeholders, raw_names, strict=True)),
    )


@pytest.mark.unit
@pytest.mark.parametrize("hostile", [NOT_UTF8, NUL], ids=["flagged-utf8-not-utf8", "nul"])
def test_zip_names_zipfile_hides_are_rejected_one_by_one(
    tmp_path: Path, hostile: tuple[bytes, tuple[str, str]]
) -> None:
    raw, rejection = hostile
    # What dataset uploads and evaluations both extract archives with.
    limits = ArchiveLimits(1000, 10**9, 200.0, 10**7, 10**8)
    folder = extract_image_folder(io.BytesIO(hostile_names_zip(raw)), tmp_path, limits)

    classes = ["dress", "pullover", "sneaker", "trouser", "tshirt"]
    assert folder.class_counts == dict.fromkeys(classes, 2)
    assert [(r.path, r.kind) for r in folder.rejected.listed] == [rejection]
    assert sorted(p.name for p in (tmp_path / "dress").iterdir()) == ["0000.png", "0001.png"]


@pytest.mark.api
def test_upload_rejects_zip_members_with_undecodable_or_nul_names(client: TestClient) -> None:
    archive = hostile_names_zip(NOT_UTF8[0], NUL[0])
    response = client.post("/v1/datasets", files={"file": ("d.zip", archive)})

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_images"] == 10 and body["num_classes"] == 5
    assert {(r["path"], r["kind"]) for r in body["rejected"]} == {NOT_UTF8[1], NUL[1]}
    assert body["rejected_counts"] == {"invalid_name": 1, "unsafe_path": 1}
