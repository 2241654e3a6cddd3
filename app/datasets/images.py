"""Decoding untrusted image files into clean RGB images, with a reason for every refusal."""

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Formats with mature, widely-fuzzed decoders; anything else is refused rather than parsed.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")

# The service applies its own, configurable pixel cap before decoding; Pillow's global guard
# stays on as a second line (it raises above twice this value).
Image.MAX_IMAGE_PIXELS = 100_000_000


class ImageRejected(ValueError):
    """An image file that cannot be used; the message says why."""


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
                    f"not a decodable image (supported formats: {', '.join(ALLOWED_FORMATS)})"
                ) from None
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"image is {width}x{height} = {width * height:,} pixels, above the limit of "
                    f"{max_pixels:,} (decompression-bomb guard)"
                )
            if width == 0 or height == 0:
                raise ImageRejected("image has zero width or height")
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return to_rgb(image)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}") from None
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
    all see images through it.
    """
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
