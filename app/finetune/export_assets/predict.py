"""Classify images with the model exported beside this script: ``python predict.py IMAGE...``

Prints one line per readable image, in the order given: ``path<TAB>label<TAB>probability``,
the top-1 label and its softmax probability (4 decimals). An image that cannot be read is
reported on stderr and skipped; the others are still classified, and the exit status is
then 1 (2 for a usage error, 0 when every image was classified).

Requirements: Python 3.10+, numpy and Pillow 9.1+, and for ``model.onnx`` (the ONNX export)
onnxruntime 1.14+::

    pip install onnxruntime numpy pillow

A TorchScript export (``model.pt``) ships this same script: there it runs the model with
torch instead of onnxruntime (``pip install torch numpy pillow``); nothing else changes.

It reads ``preprocessing.json`` and the model file from its own folder and feeds the model
exactly as the P2L service does (its ``decode_square``): PNG, JPEG, GIF, BMP, WebP or TIFF
only, at most 40,000,000 pixels (``--max-pixels``); JPEGs decoded at the smallest scale
that still covers the input size (Pillow's ``draft``); the image scaled so that its shorter
side is ``input_size`` and the centre square cut out, by Pillow's bilinear resize of that
square's box, after averaging whole pixel blocks (Pillow's ``reduce``, aligned to the full
image) wherever the downscale is more than 2x; transparency composited on white, any other
mode converted to RGB; then ``(pixel - 255 * mean) / (255 * std)`` per channel, in float32,
NCHW. Labels are the ``class_names`` of ``preprocessing.json`` (``labels.txt`` lists the
same, one per line). It imports nothing of the service: it is copied into exports as is.
"""

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

HERE = Path(__file__).resolve().parent
PREPROCESSING = HERE / "preprocessing.json"
ONNX_MODEL = HERE / "model.onnx"
TORCHSCRIPT_MODEL = HERE / "model.pt"

# What the service decodes, and its default pixel cap (P2L_MAX_IMAGE_PIXELS).
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
MAX_PIXELS = 40_000_000
# Downscales by more than this factor first average whole pixel blocks (as the service does).
REDUCING_GAP = 2.0
BATCH_SIZE = 64  # images per forward pass

Logits = Callable[[np.ndarray], np.ndarray]


class Unreadable(Exception):
    """An image file that cannot be classified; the message says why."""


def load_pixels(path: Path, size: int, max_pixels: int) -> np.ndarray:
    """``size x size x 3`` uint8 RGB pixels of an image file, as the service computes them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=ALLOWED_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise Unreadable(
                        f"image is {width}x{height} = {width * height:,} pixels, above the "
                        f"limit of {max_pixels:,} (--max-pixels)"
                    )
                if width == 0 or height == 0:
                    raise Unreadable("image has zero width or height")
                if image.format == "JPEG":
                    image.draft("RGB", (size, size))  # what the service decodes, exactly
                image.load()
                return square_pixels(image, size)
    except UnidentifiedImageError:
        raise Unreadable(
            f"not a decodable image (supported formats: {', '.join(ALLOWED_FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Unreadable(f"decompression bomb: {exc}") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise Unreadable(exc.strerror or type(exc).__name__) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Unreadable(f"corrupt or truncated image: {exc}") from None


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side scaled to ``size``, the centre ``size x size`` square cut out, as RGB.

    The box of that square in source coordinates is resized with Pillow's bilinear filter;
    a downscale by more than 2x first averages whole pixel blocks aligned to the full
    image's grid. Only the region the filter reads is converted and reduced.
    """
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    step_x, step_y = width / new_w, height / new_h  # source pixels per output pixel
    box = (left * step_x, top * step_y, (left + size) * step_x, (top + size) * step_y)
    factor_x, factor_y = max(1, int(step_x / REDUCING_GAP)), max(1, int(step_y / REDUCING_GAP))
    # The filter's support beyond the box (one more pixel for rounding), on the blocks' grid.
    margin_x, margin_y = max(step_x, 1.0) + 1, max(step_y, 1.0) + 1
    x0 = int(max(0.0, box[0] - margin_x)) // factor_x * factor_x
    y0 = int(max(0.0, box[1] - margin_y)) // factor_y * factor_y
    x1 = min(width, math.ceil(math.ceil(box[2] + margin_x) / factor_x) * factor_x)
    y1 = min(height, math.ceil(math.ceil(box[3] + margin_y) / factor_y) * factor_y)
    mode = "RGBA" if has_alpha(image) else "RGB"
    region = image.crop((x0, y0, x1, y1))
    if region.mode != mode:
        region = region.convert(mode)
    if (factor_x, factor_y) != (1, 1):
        # Averaging before compositing on white: Pillow reduces RGBA premultiplied.
        region = region.reduce((factor_x, factor_y))
    box = (
        (box[0] - x0) / factor_x,
        (box[1] - y0) / factor_y,
        (box[2] - x0) / factor_x,
        (box[3] - y0) / factor_y,
    )
    square = to_rgb(region).resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(square, dtype=np.uint8)


def has_alpha(image: Image.Image) -> bool:
    """Whether the image has transparency (an alpha band, or a transparent palette entry)."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, transparent pixels composited on a white background."""
    if has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def normalise(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 pixels as the model's float32 NCHW input."""
    # float32 throughout, in the service's order of operations: the same bits as its tensors.
    scale = np.float32(255)
    mean_255 = (np.asarray(mean, dtype=np.float32) * scale).reshape(1, 3, 1, 1)
    std_255 = (np.asarray(std, dtype=np.float32) * scale).reshape(1, 3, 1, 1)
    images = pixels.astype(np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray((images - mean_255) / std_255, dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of each row of logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def onnx_model(path: Path, spec: dict[str, Any]) -> Logits:
    """Logits of a batch by onnxruntime."""
    import onnxruntime  # type: ignore[import-untyped]

    # Every provider this build has (onnxruntime-gpu refuses a session that names none).
    session = onnxruntime.InferenceSession(
        str(path), providers=onnxruntime.get_available_providers()
    )

    def run(batch: np.ndarray) -> np.ndarray:
        (logits,) = session.run([spec["output_name"]], {spec["input_name"]: batch})
        return np.asarray(logits, dtype=np.float64)

    return run


def torchscript_model(path: Path) -> Logits:
    """Logits of a batch by torch (a TorchScript export)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is flagged as deprecated
        # torch.jit.load is unannotated; it returns a ScriptModule.
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    module.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = module(torch.from_numpy(batch))
        return np.asarray(logits.double().numpy())

    return run


def one_line(text: str) -> str:
    """``text`` with tabs and line breaks written as ``\\t``, ``\\n``, ``\\r``: one field of one
    output line. Backslashes stay as they are, so a Windows path prints as given."""
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def classify(paths: Sequence[str], logits: Logits, spec: dict[str, Any], max_pixels: int) -> int:
    """Print a line per readable image and an error per unreadable one; how many failed."""
    size, names = int(spec["input_size"]), list(spec["class_names"])
    failed = 0
    for start in range(0, len(paths), BATCH_SIZE):
        readable: list[tuple[str, np.ndarray]] = []
        for name in paths[start : start + BATCH_SIZE]:
            try:
                readable.append((name, load_pixels(Path(name), size, max_pixels)))
            except Unreadable as exc:
                failed += 1
                print(f"predict.py: {one_line(name)}: {exc}", file=sys.stderr, flush=True)
        if not readable:
            continue
        batch = normalise(np.stack([pixels for _, pixels in readable]), spec["mean"], spec["std"])
        probabilities = softmax(logits(batch))
        for (name, _), row in zip(readable, probabilities, strict=True):
            best = int(row.argmax())
            print(f"{one_line(name)}\t{one_line(names[best])}\t{row[best]:.4f}")
        sys.stdout.flush()
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    """``python predict.py IMAGE...``; the exit status."""
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Classify images with the exported model beside this script: one line "
        "per image, path<TAB>label<TAB>probability of the top-1 label.",
    )
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"refuse larger images (the service's default: {MAX_PIXELS:,})",
    )
    args = parser.parse_args(argv)
    # Pillow's own guard stays on, above the cap checked here.
    Image.MAX_IMAGE_PIXELS = max(args.max_pixels, 100_000_000)
    try:
        spec = json.loads(PREPROCESSING.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"predict.py: cannot read {PREPROCESSING}: {exc}", file=sys.stderr)
        return 2
    if ONNX_MODEL.is_file():
        logits = onnx_model(ONNX_MODEL, spec)
    elif TORCHSCRIPT_MODEL.is_file():
        logits = torchscript_model(TORCHSCRIPT_MODEL)
    else:
        print(f"predict.py: no model.onnx or model.pt in {HERE}", file=sys.stderr)
        return 2
    failed = classify(args.images, logits, spec, args.max_pixels)
    if failed:
        print(f"predict.py: {failed} of {len(args.images)} images not classified", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
