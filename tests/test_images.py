"""Image decoding rules: every mode becomes RGB, transparency lands on white, bombs are refused."""

import io

import pytest
from PIL import Image

from app.datasets.images import ImageRejected, open_rgb
from tests.archives import clipart_images, huge_png


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
    with pytest.raises(ImageRejected, match="decompression-bomb guard"):
        open_rgb(huge_png(100_000_000), max_pixels=40_000_000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"hello", "not a decodable image"),
        (b"%PDF-1.4 not an image", "not a decodable image"),
        (encode(Image.new("RGB", (8, 8)), "JPEG")[:40], "corrupt or truncated"),
    ],
)
def test_undecodable_files_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected, match=reason):
        open_rgb(data, max_pixels=100)
