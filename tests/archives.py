"""Builders of real-image archives (good and hostile) for the tests."""

import io
import struct
import tarfile
import time
import zipfile
import zlib
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from app.zoo.bundled import bundled_target

DATA = Path(__file__).parent / "data"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def encoded(image: Image.Image, format: str, **options: object) -> bytes:
    """Encode a PIL image in ``format`` (PNG, JPEG, ...) with Pillow's ``options``."""
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def varied_images() -> dict[str, bytes]:
    """Images by file name in every format and mode the service decodes: the real clip art
    (transparent RGBA, LA, palette), a garment of each class, and the eagle and a large noisy
    gradient re-encoded (JPEG for its draft decode, 7x downscales for block averaging, CMYK,
    16-bit grey, 500:1, one pixel): where a plain resize differs from the service's."""
    rng = np.random.default_rng(0)
    clipart = {f"{k}-{i}.png": d for k, v in clipart_images().items() for i, d in enumerate(v)}
    garments = {f"garment-{k}.png": v[0] for k, v in fashion_mnist_images(per_class=1).items()}
    eagle = Image.open(DATA / "clipart" / "animals" / "eagle_01.png")  # 794 x 1123, P + tRNS
    smooth = np.linspace(0, 255, 1500 * 2100 * 3).reshape(1500, 2100, 3) % 256
    noisy = (smooth + rng.normal(0, 20, smooth.shape)).clip(0, 255).astype(np.uint8)
    large = Image.fromarray(noisy, "RGB")  # a 7x downscale: whole-block averaging first
    made = {
        "eagle.jpg": encoded(eagle.convert("RGB"), "JPEG", quality=90),  # JPEG draft
        "large.jpg": encoded(large, "JPEG", quality=85),
        "large-grey.jpg": encoded(large.convert("L"), "JPEG"),
        "large-cmyk.jpg": encoded(large.convert("CMYK"), "JPEG"),
        "large.png": encoded(large, "PNG"),
        "large-rgba.webp": encoded(large.convert("RGBA"), "WEBP", quality=80),
        "eagle.gif": encoded(eagle.convert("RGBA"), "GIF"),  # P with a transparent index
        "eagle.bmp": encoded(eagle.convert("RGB"), "BMP"),
        "eagle.tiff": encoded(eagle.convert("RGBA"), "TIFF"),
        "grey16.png": encoded(Image.fromarray((smooth[:300, :200, 0] * 200).astype(np.uint16)),
                              "PNG"),
        "thin.png": encoded(large.crop((0, 0, 1500, 3)), "PNG"),  # 500:1
        "one-pixel.png": encoded(Image.new("RGB", (1, 1), (200, 10, 30)), "PNG"),
    }  # fmt: skip
    return clipart | garments | made


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
            # A fixed timestamp: the same entries make the same bytes (writestr stamps now).
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.external_attr = (0o120777 << 16) | 0  # S_IFLNK | rwx
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_bytes(
    entries: dict[str, bytes],
    compression: str = "gz",
    symlinks: dict[str, str] | None = None,
    hardlinks: dict[str, str] | None = None,
    tar_format: int = tarfile.PAX_FORMAT,
    encoding: str = "utf-8",
) -> bytes:
    """A tar (``compression`` '', 'gz', 'bz2' or 'xz') with files, symlinks and hard links.

    ``tar_format`` GNU_FORMAT writes long names as GNU long-name headers (PAX: pax records);
    ``encoding`` is how names are written (e.g. latin-1, as old tools do).
    """
    buffer = io.BytesIO()
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(fileobj=buffer, mode=mode, format=tar_format, encoding=encoding) as archive:
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


@cache
def big_rgba_png(side: int = 6300) -> bytes:
    """A ~170 KB PNG of ``side x side`` RGBA pixels (159 MB decoded at 6,300): half-transparent
    green with an opaque red square in the centre."""
    image = Image.new("RGBA", (side, side), (10, 200, 30, 128))
    image.paste(
        (255, 0, 0, 255), (side * 9 // 20, side * 9 // 20, side * 11 // 20, side * 11 // 20)
    )
    return png_bytes(image)


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


def chained_long_name_tar(entries: dict[str, bytes], chain: int = 3000) -> bytes:
    """A plain tar whose first member is preceded by ``chain`` GNU long-name headers.

    Each long-name header names the member again; tarfile follows them recursively.
    """
    blocks = []
    for index in range(chain):
        name = f"dress/chained-{index}.png".encode() + b"\0"
        header = tarfile.TarInfo("././@LongLink")
        header.type, header.size = tarfile.GNUTYPE_LONGNAME, len(name)
        blocks.append(header.tobuf(tarfile.GNU_FORMAT) + name.ljust(tarfile.BLOCKSIZE, b"\0"))
    plain = tar_bytes(entries, compression="", tar_format=tarfile.GNU_FORMAT)
    return b"".join(blocks) + plain


def zip_with_special_entries(
    entries: dict[str, bytes],
    encrypted: dict[str, bytes] | None = None,
    methods: dict[str, tuple[int, bytes]] | None = None,
    password: bytes = b"secret",
) -> bytes:
    """A zip of ``entries`` plus ZipCrypto-``encrypted`` entries (readable with ``password``)
    and entries whose header names another compression method (``name: (method, data)``).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, data in (encrypted or {}).items():
            info = _write_stored(archive, name, _zipcrypto(data, password))
            info.flag_bits |= 0x1  # encrypted
            info.CRC, info.file_size = zlib.crc32(data), len(data)
            _rewrite_local_header(buffer, info)
        for name, (method, data) in (methods or {}).items():
            info = _write_stored(archive, name, data)
            info.compress_type = method
            _rewrite_local_header(buffer, info)
    return buffer.getvalue()


def _write_stored(archive: zipfile.ZipFile, name: str, data: bytes) -> zipfile.ZipInfo:
    archive.writestr(zipfile.ZipInfo(name, time.localtime()[:6]), data, zipfile.ZIP_STORED)
    return archive.getinfo(name)  # the record the central directory is written from


def _rewrite_local_header(buffer: io.BytesIO, info: zipfile.ZipInfo) -> None:
    end = buffer.tell()
    buffer.seek(info.header_offset)
    buffer.write(info.FileHeader())
    buffer.seek(end)


def _zipcrypto(data: bytes, password: bytes) -> bytes:
    """Traditional PKWARE encryption (APPNOTE 6.1): a 12-byte header, then the data."""
    keys = [0x12345678, 0x23456789, 0x34567890]

    def crc_byte(crc: int, byte: int) -> int:
        return zlib.crc32(bytes([byte]), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF

    def update(byte: int) -> None:
        keys[0] = crc_byte(keys[0], byte)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = crc_byte(keys[2], keys[1] >> 24)

    for byte in password:
        update(byte)
    # The header's last byte is the check byte zipfile verifies the password with.
    plain = bytes(11) + bytes([zlib.crc32(data) >> 24]) + data
    out = bytearray()
    for byte in plain:
        temp = (keys[2] | 2) & 0xFFFF
        out.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
        update(byte)
    return bytes(out)


def tall_png(height: int = 300_000, width: int = 1) -> bytes:
    """A tiny-on-disk ``width x height`` PNG: red, with a green band across its centre.

    Transposed (``width`` large) it is a wide strip with a green band down its centre.
    """
    image = Image.new("RGB", (width, height), (255, 0, 0))
    if height >= width:
        image.paste((0, 255, 0), (0, height // 2 - 20, width, height // 2 + 20))
    else:
        image.paste((0, 255, 0), (width // 2 - 20, 0, width // 2 + 20, height))
    return png_bytes(image)


def zip_with_raw_names(entries: dict[str, bytes], raw_names: dict[str, bytes]) -> bytes:
    """A zip of ``entries`` whose member ``name`` is stored as the bytes ``raw_names[name]``
    (same length) in its local and central headers, both flagged UTF-8 (bit 0x800): names
    zipfile cannot write itself (a NUL byte, bytes that are not UTF-8)."""
    archive = bytearray(zip_bytes(entries))
    for name, raw in raw_names.items():
        placeholder = name.encode("utf-8")
        assert len(raw) == len(placeholder) and archive.count(placeholder) == 2, name
        local = archive.index(placeholder)  # local headers come first, the directory last
        central = archive.index(placeholder, local + 1)
        for name_at, flags_at in ((local, local - 30 + 6), (central, central - 46 + 8)):
            archive[name_at : name_at + len(raw)] = raw
            (flags,) = struct.unpack_from("<H", archive, flags_at)
            struct.pack_into("<H", archive, flags_at, flags | 0x800)
    return bytes(archive)
