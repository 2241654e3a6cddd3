"""Build the small real-image fixtures the tests use, from Debian's offline data packages.

Needs `apt-get install dataset-fashion-mnist openclipart-png`. Writes
`tests/data/fashion_mnist_sample.npz` (5 garment classes x 50 images from the t10k split)
and `tests/data/clipart/<category>/*.png` (a few small, mostly transparent clip-art files),
so the test suite runs anywhere without those packages.
"""

import shutil
from pathlib import Path

import numpy as np

from bench.zoo.families import CLIPART_DIR, FASHION_DIR, read_idx

OUT = Path(__file__).resolve().parents[1] / "tests" / "data"
GARMENTS = {0: "tshirt", 1: "trouser", 2: "pullover", 3: "dress", 7: "sneaker"}
CLIPART_CLASSES = ("animals", "food", "transportation")


def main() -> None:
    """Write both fixtures (deterministic: first files in sorted order)."""
    OUT.mkdir(parents=True, exist_ok=True)
    images = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    keep_images, keep_labels = [], []
    for label in GARMENTS:
        index = np.flatnonzero(labels == label)[-50:]  # the tail of t10k: kept out of training
        keep_images.append(images[index])
        keep_labels.append(np.full(len(index), label, dtype=np.uint8))
    np.savez_compressed(
        OUT / "fashion_mnist_sample.npz",
        images=np.concatenate(keep_images),
        labels=np.concatenate(keep_labels),
        names=np.array([GARMENTS[k] for k in GARMENTS]),
        label_ids=np.array(list(GARMENTS)),
    )
    clipart_out = OUT / "clipart"
    shutil.rmtree(clipart_out, ignore_errors=True)
    for category in CLIPART_CLASSES:
        files = sorted(
            p
            for p in (CLIPART_DIR / category).rglob("*.png")
            if not p.is_symlink() and 3_000 < p.stat().st_size < 12_000
        )[:6]
        (clipart_out / category).mkdir(parents=True)
        for path in files:
            shutil.copyfile(path, clipart_out / category / path.name)
    print(f"wrote fixtures under {OUT}")


if __name__ == "__main__":
    main()
