"""Decoding untrusted image files into clean RGB images, with a reason for every refusal."""

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Formats with mature, widely-fuzzed decoders; anything else is refused rather than parsed.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")

# The service applies its own, configurable pixel cap before decoding; Pillow's global guard
# stays on as a second line (it raises above twice this value).
Image.MAX_IMAGE_PIXELS = 100_000_000

# Downscales by more than this factor first average whole pixel blocks (fast, and no aliasing).
_REDUCING_GAP = 2.0


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


def open_rgb(source: bytes | Path, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode an image fully and return it as RGB (transparency composited on white).

    ``draft_size`` lets JPEG decode at a reduced scale when only a small image is needed.
    Raises ImageRejected with a human-readable reason for undecodable, unsupported or
    oversized (decompression-bomb) images.
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
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return to_rgb(image)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb: {exc}", "too_many_pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}", "corrupt_image") from None
    finally:
        stream.close()


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB, compositing transparent pixels on a white background."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """``size x size x 3`` uint8 pixels: shorter side resized to ``size``, centre crop.

    The one geometric preprocessing of the service: signatures, training and prediction
    all see images through it. Only the source pixels under the centre square are read, so
    the work is bounded by ``size`` and that square, whatever the aspect ratio: scaling a
    1 x 300,000 image's short side up first would build a 32 x 9,600,000 intermediate (GBs).
    """
    if image.mode != "RGB":
        image = to_rgb(image)
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
    if factor_x > 1 or factor_y > 1:
        # The bilinear filter reaches half an output pixel beyond the box.
        x0 = int(max(0.0, box[0] - step_x / 2)) // factor_x * factor_x
        y0 = int(max(0.0, box[1] - step_y / 2)) // factor_y * factor_y
        x1 = min(width, math.ceil(math.ceil(box[2] + step_x / 2) / factor_x) * factor_x)
        y1 = min(height, math.ceil(math.ceil(box[3] + step_y / 2) / factor_y) * factor_y)
        image = image.reduce((factor_x, factor_y), box=(x0, y0, x1, y1))
        box = (
            (box[0] - x0) / factor_x,
            (box[1] - y0) / factor_y,
            (box[2] - x0) / factor_x,
            (box[3] - y0) / factor_y,
        )
    square = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(square, dtype=np.uint8)
