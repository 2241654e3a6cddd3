"""Builders of real-image archives (good and hostile) for the tests."""

import io
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from app.zoo.bundled import bundled_target

DATA = Path(__file__).parent / "data"


def png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def fashion_mnist_images(per_class: int = 50) -> dict[str, list[bytes]]:
    """Held-out Fashion-MNIST images (5 garment classes) as PNG bytes, ``per_class`` each."""
    sample = np.load(DATA / "fashion_mnist_sample.npz")
    images: dict[str, list[bytes]] = {}
    for name, label in zip(sample["names"], sample["label_ids"], strict=True):
        pixels = sample["images"][sample["labels"] == label][:per_class]
        images[str(name)] = [png_bytes(Image.fromarray(p, "L")) for p in pixels]
    return images


def clipart_images() -> dict[str, list[bytes]]:
    """Real clip-art PNGs (mostly transparent RGBA/LA/palette) by category."""
    return {
        folder.name: [p.read_bytes() for p in sorted(folder.glob("*.png"))]
        for folder in sorted((DATA / "clipart").iterdir())
    }


def image_folder_entries(
    images: dict[str, list[bytes]], top: str = "", suffix: str = ".png"
) -> dict[str, bytes]:
    """``{path: bytes}`` laid out as ``[top/]<class>/<index><suffix>``."""
    prefix = f"{top}/" if top else ""
    return {
        f"{prefix}{cls}/{i:04d}{suffix}": data
        for cls, items in images.items()
        for i, data in enumerate(items)
    }


def zip_bytes(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A zip of the entries; ``symlinks`` adds Unix symlink members (name -> target)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0  # S_IFLNK | rwx
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_bytes(
    entries: dict[str, bytes],
    compression: str = "gz",
    symlinks: dict[str, str] | None = None,
    hardlinks: dict[str, str] | None = None,
) -> bytes:
    """A tar (``compression`` '', 'gz', 'bz2' or 'xz') with files, symlinks and hard links."""
    buffer = io.BytesIO()
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), time.time()
            archive.addfile(info, io.BytesIO(data))
        for kind, links in ((tarfile.SYMTYPE, symlinks), (tarfile.LNKTYPE, hardlinks)):
            for name, target in (links or {}).items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                archive.addfile(info)
    return buffer.getvalue()


def huge_png(pixels: int = 100_000_000) -> bytes:
    """A genuine, tiny-on-disk PNG of ``pixels`` pixels (1-bit), i.e. a decompression bomb."""
    side = int(pixels**0.5)
    return png_bytes(Image.new("1", (side, side)))


def zip_bomb(expanded_bytes: int = 300 * 1024**2) -> bytes:
    """A small zip whose single member inflates to ``expanded_bytes`` of zeros."""
    buffer = io.BytesIO()
    chunk = bytes(1024**2)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("bomb/zeros.png", "w", force_zip64=True) as member:
            for _ in range(expanded_bytes // len(chunk)):
                member.write(chunk)
        archive.writestr("cats/a.png", png_bytes(Image.new("RGB", (8, 8))))
    return buffer.getvalue()


def tar_bomb(expanded_bytes: int = 300 * 1024**2) -> bytes:
    """A small tar.gz whose single member expands to ``expanded_bytes`` of zeros."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        info = tarfile.TarInfo("bomb/zeros.png")
        info.size = expanded_bytes
        archive.addfile(info, _Zeros(expanded_bytes))
    return buffer.getvalue()


class _Zeros(io.RawIOBase):
    """A readable stream of ``size`` zero bytes, without holding them in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def bundled_target_images(name: str, part: str = "train") -> dict[str, list[bytes]]:
    """A bundled benchmark target (never used to train anything) as PNGs by class: its
    training part (what a user uploads) or its test part (held out for predictions)."""
    images, labels, names, is_test = bundled_target(name)
    keep = is_test if part == "test" else ~is_test
    return {
        cls: [png_bytes(Image.fromarray(img)) for img in images[keep & (labels == i)]]
        for i, cls in enumerate(names)
    }
