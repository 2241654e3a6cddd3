"""The artifact store publishes atomically and never writes outside its root."""

from pathlib import Path

import pytest

from app.store import LocalArtifactStore


def test_publish_and_write_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    staging = store.new_staging_dir()
    (staging / "a.bin").write_bytes(b"abc")
    uri = store.publish(staging, "things/one")
    assert uri == (tmp_path / "things" / "one").as_uri()
    assert (tmp_path / "things/one/a.bin").read_bytes() == b"abc"
    store.write_file("things/two.bin", b"xyz")
    assert (tmp_path / "things/two.bin").read_bytes() == b"xyz"
    assert list(store.tmp.iterdir()) == []
    # Publishing over an existing artifact fails rather than mixing the two.
    again = store.new_staging_dir()
    with pytest.raises(OSError):
        store.publish(again, "things/one")


def test_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "root")
    for key in ("../outside", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(ValueError, match="escapes the store"):
            store.path(key)


def test_delete_and_sweep(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    store.write_file("x/file.bin", b"1")
    store.delete("x/file.bin")
    store.delete("x/file.bin")  # deleting twice is fine
    assert not (tmp_path / "x/file.bin").exists()
    store.new_staging_dir()
    assert store.sweep_tmp() == 1 and list(store.tmp.iterdir()) == []


def test_sweep_spares_recent_staging_when_asked(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    recent = store.new_staging_dir()
    assert store.sweep_tmp(older_than_seconds=3600) == 0 and recent.exists()
    assert store.sweep_tmp() == 1 and not recent.exists()
