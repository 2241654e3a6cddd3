"""Decoding in the process pool: same pixels, same order, errors intact, no orphans."""

import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.imaging import loading
from app.imaging.images import ImageRejected, decode_square
from app.p2l.reference import FORWARD_BOUND_SIZE, load_reference, share_cpus_with_decoding
from app.p2l.signature import compute_signature
from app.zoo.bundled import BUNDLED_DIR

needs_two_cpus = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: no pool")
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real photos-like images of mixed modes, sizes and formats (bundled target pixels)."""
    data = np.load(BUNDLED_DIR / "targets" / sorted(os.listdir(BUNDLED_DIR / "targets"))[0])
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, pixels in enumerate(data["images"][:60]):
        image = Image.fromarray(pixels).resize((40 + i, 96 - i // 2), Image.Resampling.BILINEAR)
        if i % 3 == 0:
            path = root / f"{i:03d}.jpg"
            image.save(path, quality=90)
        elif i % 3 == 1:
            path = root / f"{i:03d}.png"
            image.convert("RGBA").save(path)  # alpha: composited on white
        else:
            path = root / f"{i:03d}.png"
            image.convert("P").save(path)
        paths.append(path)
    return paths


def expected(paths: list[Path], size: int) -> np.ndarray:
    """What the service's one preprocessing gives, image by image, in this process."""
    return np.stack([decode_square(p, 10**8, size) for p in paths])


@pytest.mark.unit
@needs_two_cpus
@pytest.mark.parametrize("size", [32, 224])
def test_pool_gives_the_same_pixels_in_the_same_order(image_files: list[Path], size: int) -> None:
    batches = list(loading.pixel_batches(image_files, size, 7, processes=True))
    assert [len(b) for b in batches] == [7] * 8 + [4]
    np.testing.assert_array_equal(np.concatenate(batches), expected(image_files, size))
    assert loading.decode_pool_pids()  # it did run in the pool
    threaded = loading.load_all_pixels(image_files, size, threads=2, processes=False)
    np.testing.assert_array_equal(threaded, expected(image_files, size))


@pytest.mark.unit
@needs_two_cpus
def test_pool_is_kept_and_reused(image_files: list[Path]) -> None:
    loading.load_all_pixels(image_files, 32, processes=True)
    pids = loading.decode_pool_pids()
    assert len(pids) == os.cpu_count()
    loading.load_all_pixels(image_files[::-1], 32, processes=True)
    assert loading.decode_pool_pids() == pids


@pytest.mark.unit
def test_small_sets_stay_in_process_large_ones_use_the_pool() -> None:
    assert not loading.uses_processes(loading.PROCESS_MIN_IMAGES - 1)
    assert not loading.uses_processes(10**6, processes=False)
    assert loading.uses_processes(loading.PROCESS_MIN_IMAGES) == ((os.cpu_count() or 1) > 1)


@pytest.mark.unit
@needs_two_cpus
def test_a_bad_file_fails_with_its_reason_from_the_pool(
    image_files: list[Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(image_files[1].read_bytes()[:200])  # truncated PNG
    with pytest.raises(ImageRejected) as caught:
        loading.load_all_pixels([*image_files[:5], broken], 32, processes=True)
    assert caught.value.kind == "corrupt_image"
    # The pool still serves the next caller.
    assert loading.load_all_pixels(image_files[:9], 32, processes=True).shape == (9, 32, 32, 3)


@pytest.mark.unit
@needs_two_cpus
def test_a_killed_worker_does_not_lose_the_batch(image_files: list[Path]) -> None:
    loading.load_all_pixels(image_files, 32, processes=True)
    os.kill(loading.decode_pool_pids()[0], 9)
    time.sleep(0.2)
    pixels = loading.load_all_pixels(image_files, 32, processes=True)
    np.testing.assert_array_equal(pixels, expected(image_files, 32))
    assert len(loading.load_all_pixels(image_files, 32, processes=True)) == len(image_files)
    assert len(loading.decode_pool_pids()) == os.cpu_count()  # a fresh pool


@pytest.mark.unit
@needs_two_cpus
def test_workers_end_with_their_owner_even_when_it_is_killed(image_files: list[Path]) -> None:
    """A SIGKILLed API process leaves no decoding process behind."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from app.imaging import loading
        paths = [Path(p) for p in {[str(p) for p in image_files]!r}]
        loading.load_all_pixels(paths, 32, processes=True)
        print(*loading.decode_pool_pids(), flush=True)
        time.sleep(60)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    pids = [int(pid) for pid in owner.stdout.readline().split()]
    assert len(pids) == os.cpu_count()
    assert all(_rss_mb(pid) < 150 for pid in pids)  # numpy + Pillow, not torch
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 60  # a hang guard: a loaded machine reaps slowly
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.2)
    assert not any(_running(pid) for pid in pids)


def _decode_in(paths: list[Path], results: "multiprocessing.Queue[object]") -> None:
    results.put(loading.load_all_pixels(paths, 32, processes=True).shape)


@pytest.mark.system
def test_a_daemonic_process_decodes_on_threads(image_files: list[Path]) -> None:
    """The local job worker is daemonic (no children allowed): large sets still decode."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=_decode_in, args=(image_files, results), daemon=True)
    worker.start()
    try:
        assert results.get(timeout=60) == (len(image_files), 32, 32, 3)
    finally:
        worker.join(10)
    assert worker.exitcode == 0


@pytest.mark.unit
def test_signature_is_the_same_whichever_decoder(
    image_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = load_reference("compact_cnn", BUNDLED_DIR / "reference.safetensors", "cpu")
    files = {"a": image_files[:30], "b": image_files[30:]}
    monkeypatch.setattr(loading, "PROCESS_MIN_IMAGES", 1)  # these 60 count as a large set
    in_pool = compute_signature(reference, files, batch_size=16)
    reference.decode_processes = False
    in_threads = compute_signature(reference, files, batch_size=16)
    for field in ("class_counts", "mean", "class_means", "variance"):
        np.testing.assert_array_equal(getattr(in_pool, field), getattr(in_threads, field))
    assert in_pool.class_names == in_threads.class_names == ["a", "b"]


@pytest.mark.unit
def test_cuda_switches_are_kept_and_harmless_on_cpu(image_files: list[Path]) -> None:
    plain = load_reference("compact_cnn", BUNDLED_DIR / "reference.safetensors", "cpu")
    switched = load_reference(
        "compact_cnn",
        BUNDLED_DIR / "reference.safetensors",
        "cpu",
        mixed_precision=False,
        channels_last=False,
        pin_memory=False,
        decode_processes=False,
    )
    assert (switched.mixed_precision, switched.channels_last, switched.pin_memory) == (
        False,
        False,
        False,
    )
    assert plain.mixed_precision and plain.channels_last and plain.pin_memory
    pixels = expected(image_files[:10], 32)
    a = torch.cat(list(plain.embed_array(pixels)))
    b = torch.cat(list(switched.embed_array(pixels)))
    assert torch.equal(a, b)


@pytest.mark.unit
def test_torch_gets_every_cpu_when_the_forward_pass_dominates() -> None:
    before = torch.get_num_threads()
    cpus = os.cpu_count() or 1
    try:
        share_cpus_with_decoding(0, FORWARD_BOUND_SIZE)
        assert torch.get_num_threads() == cpus
        share_cpus_with_decoding(0, 32)
        assert torch.get_num_threads() == max(1, cpus - loading.decode_threads())
    finally:
        torch.set_num_threads(before)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
