"""Decoding untrusted image files into clean RGB images, with a reason for every refusal."""

import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.imaging.budget import DecodeBusy, decode_budget

# Formats with mature, widely-fuzzed decoders; anything else is refused rather than parsed.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")

# The service applies its own, configurable pixel cap before decoding; Pillow's global guard
# stays on as a second line (it raises above twice this value).
Image.MAX_IMAGE_PIXELS = 100_000_000

# Downscales by more than this factor first average whole pixel blocks (fast, and no aliasing).
_REDUCING_GAP = 2.0
# Full-size buffers a format's decoder holds at once, where it is more than one.
_DECODER_BUFFERS = {"WEBP": 4}
# Source pixels converted and reduced at a time (4 MB in RGBA): the only copies of a large
# image's pixels besides the decoder's own buffer.
STRIP_PIXELS = 1_000_000
# Pillow allocates image memory in blocks of 16 MB by default, which glibc serves from its
# arenas and keeps after they are freed: four decodes one after another on four threads
# left ~500 MB resident. Blocks this large are mapped and unmapped whole (above glibc's
# 32 MB mmap threshold), so a decoded buffer's memory goes back to the OS when it is freed.
Image.core.set_block_size(256 * 1024**2)


class ImageRejected(ValueError):
    """An image file that cannot be used; the message says why, ``kind`` says it in one word.

    Kinds: ``not_an_image``, ``too_many_pixels``, ``corrupt_image``.
    """

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind

    def __reduce__(self) -> tuple[type["ImageRejected"], tuple[str, str]]:
        # Decoding may run in another process; the error crosses back pickled.
        return (ImageRejected, (str(self), self.kind))


@contextmanager
def _opened(source: bytes | Path, max_pixels: int) -> Iterator[Image.Image]:
    """The image, its header read and checked (format, pixel cap), not yet decoded.

    Any error while the block decodes it becomes ImageRejected with a readable reason.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(stream, formats=ALLOWED_FORMATS)
            except UnidentifiedImageError:
                raise ImageRejected(
                    f"not a decodable image (supported formats: {', '.join(ALLOWED_FORMATS)})",
                    "not_an_image",
                ) from None
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"image is {width}x{height} = {width * height:,} pixels, above the limit of "
                    f"{max_pixels:,} (decompression-bomb guard)",
                    "too_many_pixels",
                )
            if width == 0 or height == 0:
                raise ImageRejected("image has zero width or height", "corrupt_image")
            yield image
    except (ImageRejected, DecodeBusy):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb: {exc}", "too_many_pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}", "corrupt_image") from None
    finally:
        stream.close()


def decoded_bytes(image: Image.Image) -> int:
    """Bytes of the buffers Pillow decodes ``image`` into (RGB is stored as 4 bytes a pixel;
    WebP's decoder holds its canvas, a frame and two copies: four buffers, measured)."""
    width, height = image.size
    if image.mode in ("1", "L", "P"):
        per_pixel = 1
    elif image.mode.startswith("I;16"):
        per_pixel = 2
    else:
        per_pixel = 4
    return width * height * per_pixel * _DECODER_BUFFERS.get(image.format or "", 1)


@contextmanager
def _decoded(image: Image.Image) -> Iterator[Image.Image]:
    """The image decoded, its buffer reserved from the process's decode budget (waiting
    while it is taken) until the block ends and the buffer is freed."""
    with decode_budget().reserve(decoded_bytes(image)):
        try:
            image.load()
            yield image
        finally:
            image.close()


def verify_image(source: bytes | Path, max_pixels: int) -> None:
    """Decode an image once to prove it usable, keeping nothing (uploads store the file).

    JPEG decodes at 1/8 scale (every block is still read); other formats at full size, in
    the one buffer their decoder fills. Raises ImageRejected saying why it cannot be used.
    """
    with _opened(source, max_pixels) as image:
        if image.format == "JPEG":
            image.draft("RGB", (1, 1))
        with _decoded(image):
            to_rgb(image.crop((0, 0, 1, 1)))  # a mode that cannot become RGB fails here


def decode_square(source: bytes | Path, max_pixels: int, size: int) -> np.ndarray:
    """The service's one preprocessing of an image file: ``square_pixels`` at ``size``.

    Memory stays at one full-size buffer (the decoder's; JPEG decodes straight to near
    ``size``) plus ``size``-bounded work, whatever the image's dimensions or mode.
    """
    with _opened(source, max_pixels) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))
        with _decoded(image):
            return square_pixels(image, size)


def open_rgb(source: bytes | Path, max_pixels: int) -> Image.Image:
    """A whole image as RGB, for tools over trusted files; the service decodes through
    ``decode_square`` and ``verify_image``, which keep one full-size buffer at most."""
    with _opened(source, max_pixels) as image:
        image.load()
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB, compositing transparent pixels on a white background."""
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """``size x size x 3`` uint8 pixels: shorter side resized to ``size``, centre crop.

    The one geometric preprocessing of the service: signatures, training and prediction
    all see images through it. Only the source pixels under the centre square are read, a
    strip at a time, so the work and the memory beyond ``image`` itself are bounded by
    ``size``, whatever the image's dimensions, aspect ratio or mode: scaling a 1 x 300,000
    image's short side up first would build a 32 x 9,600,000 intermediate (GBs), and
    converting a 6,300 x 6,300 RGBA image to RGB whole would copy its 159 MB several times.
    """
    width, height = image.size
    # The geometry of "scale the short side to size, round the long one, crop the centre",
    # expressed as the centre box in source coordinates.
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    step_x, step_y = width / new_w, height / new_h  # source pixels per output pixel
    box = (left * step_x, top * step_y, (left + size) * step_x, (top + size) * step_y)
    # Large downscales first average whole blocks (Pillow's reducing_gap=2.0). The blocks are
    # aligned to the full image's grid, as if the whole image had been reduced, so the output
    # matches the resize-everything-then-crop result to within rounding.
    factor_x, factor_y = max(1, int(step_x / _REDUCING_GAP)), max(1, int(step_y / _REDUCING_GAP))
    # The region the bilinear filter reads (its support: an output pixel, or a source pixel
    # when enlarging, beyond the box; one more for rounding), on the blocks' grid.
    margin_x, margin_y = max(step_x, 1.0) + 1, max(step_y, 1.0) + 1
    x0 = int(max(0.0, box[0] - margin_x)) // factor_x * factor_x
    y0 = int(max(0.0, box[1] - margin_y)) // factor_y * factor_y
    x1 = min(width, math.ceil(math.ceil(box[2] + margin_x) / factor_x) * factor_x)
    y1 = min(height, math.ceil(math.ceil(box[3] + margin_y) / factor_y) * factor_y)
    region = _reduced_region(image, (factor_x, factor_y), (x0, y0, x1, y1))
    box = (
        (box[0] - x0) / factor_x,
        (box[1] - y0) / factor_y,
        (box[2] - x0) / factor_x,
        (box[3] - y0) / factor_y,
    )
    square = to_rgb(region).resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(square, dtype=np.uint8)


def _reduced_region(
    image: Image.Image, factors: tuple[int, int], region: tuple[int, int, int, int]
) -> Image.Image:
    """``region`` of ``image`` in RGB (RGBA if it has transparency), each ``factors`` block
    averaged to one pixel; built a strip of about STRIP_PIXELS source pixels at a time.

    Averaging before compositing on white gives the composite of the average (Pillow
    reduces RGBA premultiplied), so transparency is handled at the small size.
    """
    factor_x, factor_y = factors
    x0, y0, x1, y1 = region
    mode = "RGBA" if _has_alpha(image) else "RGB"
    out = Image.new(mode, (math.ceil((x1 - x0) / factor_x), math.ceil((y1 - y0) / factor_y)))
    rows = max(1, STRIP_PIXELS // max(1, (x1 - x0) * factor_y))  # output rows a strip
    for row in range(0, out.height, rows):
        top = y0 + row * factor_y
        strip = image.crop((x0, top, x1, min(y1, top + rows * factor_y)))
        if strip.mode != mode:
            strip = strip.convert(mode)
        if factors != (1, 1):
            strip = strip.reduce(factors)
        out.paste(strip, (0, row))
    return out
