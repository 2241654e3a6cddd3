"""The artifact store publishes atomically and never writes outside its root."""

import os
import time
from pathlib import Path

import pytest

from app.store import LocalArtifactStore, tmp_owner
from tests.helpers import dead_pid

pytestmark = pytest.mark.unit


def test_publish_and_write_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    staging = store.new_staging_dir()
    (staging / "a.bin").write_bytes(b"abc")
    uri = store.publish(staging, "things/one")
    assert uri == (tmp_path / "things" / "one").as_uri()
    assert (tmp_path / "things/one/a.bin").read_bytes() == b"abc"
    store.write_file("things/two.bin", b"xyz")
    assert (tmp_path / "things/two.bin").read_bytes() == b"xyz"
    assert abs(store.published_at("things/one") - time.time()) < 60
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
    assert list(store.tmp.iterdir()) == []  # the trash went with the delete


def test_tmp_entries_name_their_owner(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    staging = store.new_staging_dir()
    assert staging.name.startswith(f"stage-{tmp_owner()}-")
    assert str(os.getpid()) in staging.name


def test_sweep_removes_a_dead_local_writers_entries_at_once(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    dead = tmp_owner(dead_pid())
    crashed = [
        store.tmp / f"stage-{dead}-abc123",
        store.tmp / f"trash-{dead}-0f0f",
        store.tmp / f"fetch-{dead}-0a0a",  # an object store's download into its cache
    ]
    for folder in crashed:
        (folder / "images").mkdir(parents=True)
    (store.tmp / f"write-{dead}-xyz").write_bytes(b"half a file")
    live = store.new_staging_dir()  # this process's: in use, however old
    an_hour_ago = time.time() - 3700
    os.utime(live, (an_hour_ago, an_hour_ago))

    assert store.sweep_tmp(older_than_seconds=3600) == 4
    assert list(store.tmp.iterdir()) == [live]


def test_sweep_waits_out_the_age_cutoff_for_other_hosts(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    # Another machine's writer (its pid means nothing here), and a name from before owners.
    foreign = [store.tmp / "stage-otherhost-1-abc", store.tmp / "stage-k3j4h5"]
    for folder in foreign:
        folder.mkdir()
    assert store.sweep_tmp(older_than_seconds=3600) == 0
    an_hour_ago = time.time() - 3700
    os.utime(foreign[0], (an_hour_ago, an_hour_ago))
    assert store.sweep_tmp(older_than_seconds=3600) == 1
    assert list(store.tmp.iterdir()) == [foreign[1]]
