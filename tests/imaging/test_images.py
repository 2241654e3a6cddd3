"""Image decoding rules: every mode becomes RGB, transparency lands on white, bombs are refused,
and the one preprocessing (square_pixels) costs memory bounded by its output."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.imaging.images import ImageRejected, decode_square, open_rgb, square_pixels, to_rgb
from tests.archives import big_rgba_png, clipart_images, huge_png, tall_png

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_transparent_pixels_are_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    rgb = open_rgb(encode(image), max_pixels=100)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) == (255, 0, 0)


def test_palette_transparency_and_grey_alpha_become_rgb() -> None:
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    rgb = open_rgb(encode(palette, transparency=1), max_pixels=100)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    grey_alpha = Image.new("LA", (2, 2), (0, 0))
    assert open_rgb(encode(grey_alpha), max_pixels=100).getpixel((0, 0)) == (255, 255, 255)
    assert open_rgb(encode(Image.new("L", (2, 2), 7)), max_pixels=100).getpixel((0, 0)) == (
        7,
        7,
        7,
    )


def test_real_clipart_decodes_to_rgb() -> None:
    for files in clipart_images().values():
        for data in files:
            assert open_rgb(data, max_pixels=10_000_000).mode == "RGB"


def test_pixel_cap_refuses_before_decoding() -> None:
    with pytest.raises(ImageRejected, match="decompression-bomb guard") as refused:
        open_rgb(huge_png(100_000_000), max_pixels=40_000_000)
    assert refused.value.kind == "too_many_pixels"


@pytest.mark.parametrize(
    ("data", "reason", "kind"),
    [
        (b"hello", "not a decodable image", "not_an_image"),
        (b"%PDF-1.4 not an image", "not a decodable image", "not_an_image"),
        (encode(Image.new("RGB", (8, 8)), "JPEG")[:40], "corrupt or truncated", "corrupt_image"),
    ],
)
def test_undecodable_files_say_why(data: bytes, reason: str, kind: str) -> None:
    with pytest.raises(ImageRejected, match=reason) as refused:
        open_rgb(data, max_pixels=100)
    assert refused.value.kind == kind


def resize_then_crop(image: Image.Image, size: int) -> np.ndarray:
    """The preprocessing as it was first written: the whole image resized, then cropped."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_square_pixels_matches_resize_then_crop_on_ordinary_images(size: int) -> None:
    # Stored signatures and trained models saw images through the original preprocessing.
    pictures = [open_rgb(d, 10_000_000) for files in clipart_images().values() for d in files]
    shapes = [(28, 28), (32, 32), (33, 32), (48, 64), (300, 200), (640, 480), (1000, 37)]
    shapes += [(37, 1000), (20, 10), (517, 1203), (2000, 1500), (4001, 129)]
    for picture in pictures[::3]:
        for shape in shapes:
            image = picture.resize(shape, Image.Resampling.BICUBIC)
            got = square_pixels(image, size).astype(int)
            expected = resize_then_crop(image, size).astype(int)
            assert got.shape == (size, size, 3)
            assert np.abs(got - expected).max() <= 1, (picture.size, shape)


# Run in a fresh process: this one's peak-RSS high-water mark would hide the growth.
PEAK_GROWTH_SCRIPT = r"""
import re, sys
from pathlib import Path
from app.imaging.images import open_rgb, square_pixels

def peak_kib():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))

image = open_rgb(Path(sys.argv[1]), 40_000_000)
before = peak_kib()
pixels = square_pixels(image, 32)
print(peak_kib() - before, pixels[:, :, 1].min(), pixels[:, :, 0].max())
"""


@pytest.mark.parametrize("shape", [(1, 300_000), (300_000, 1)], ids=["tall", "wide"])
def test_extreme_aspect_ratio_costs_memory_of_its_output_only(
    shape: tuple[int, int], tmp_path: Path
) -> None:
    width, height = shape
    strip = tmp_path / "strip.png"
    strip.write_bytes(tall_png(height, width))
    run = subprocess.run(
        [sys.executable, "-c", PEAK_GROWTH_SCRIPT, str(strip)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    grown_kib, green_min, red_max = map(int, run.stdout.split())
    assert grown_kib < 10 * 1024, f"square_pixels raised peak RSS by {grown_kib / 1024:.0f} MiB"
    # What the model sees is the centre of the strip: its green band.
    assert green_min == 255 and red_max == 0


def gradient(mode: str, size: tuple[int, int]) -> Image.Image:
    """An image of ``mode`` whose colour and transparency vary across it."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(255, 0, height, dtype=np.uint8)[:, None].repeat(width, 1)
    rgba = Image.fromarray(np.stack([x, y, (x // 2 + y // 2), (x // 3 + y // 2 + 40)], axis=2))
    if mode == "P":
        return rgba.convert("RGB").quantize(64)
    return rgba.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "RGB", "I;16"])
@pytest.mark.parametrize("size", [(3000, 2000), (700, 5000), (40, 30)])
def test_decoding_a_strip_at_a_time_gives_the_whole_image_conversion(
    mode: str, size: tuple[int, int]
) -> None:
    # The pixels a model sees did not change when decoding stopped converting whole images.
    image = gradient(mode, size)
    data = encode(image)
    for side in (32, 224):
        got = decode_square(data, 40_000_000, side).astype(int)
        whole = resize_then_crop(to_rgb(Image.open(io.BytesIO(data))), side).astype(int)
        assert np.abs(got - whole).max() <= 2, (mode, size, side)


# Each step in a fresh process: this one's peak-RSS high-water mark would hide the growth.
DECODE_PEAK_SCRIPT = r"""
import re, sys
from pathlib import Path
from app.imaging.images import decode_square, verify_image

def peak_kib():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))

data = Path(sys.argv[1]).read_bytes()
before = peak_kib()
if sys.argv[2] == "verify":
    verify_image(data, 40_000_000)
    print(peak_kib() - before)
else:
    pixels = decode_square(data, 40_000_000, 224)
    print(peak_kib() - before, *pixels[112, 112], *pixels[0, 0])
"""


@pytest.mark.parametrize("step", ["verify", "decode"])
def test_a_6300_px_rgba_png_costs_one_full_size_buffer(step: str, tmp_path: Path) -> None:
    # 159 MB of pixels; decoded whole and converted to RGB it took ~760 MB (issue #23).
    path = tmp_path / "big.png"
    path.write_bytes(big_rgba_png())
    run = subprocess.run(
        [sys.executable, "-c", DECODE_PEAK_SCRIPT, str(path), step],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    grown_kib, *pixels = map(int, run.stdout.split())
    assert grown_kib < 200 * 1024, f"{step}: peak RSS +{grown_kib / 1024:.0f} MiB"
    if step == "decode":  # the opaque red centre; half-transparent green on white around it
        assert pixels == [255, 0, 0, 132, 227, 142]
