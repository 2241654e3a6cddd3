"""Real image domains available offline, as 32x32 RGB arrays with a group id per image.

Groups are what a split must keep together: one clip-art drawing and its ``_01``/``_02``
variants, one font file of a script, one Fashion-MNIST split. Sources (Debian packages and
scikit-learn) are listed in the README; nothing here downloads anything.
"""

import gzip
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from app.datasets.images import ImageRejected, open_rgb, square_pixels

SIZE = 32
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CLIPART_DIR = Path("/usr/share/openclipart/png")
FONT_DIRS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype"))
FASHION_CLASSES = (
    "tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
)  # fmt: skip


@dataclass
class Domain:
    """Images of one domain: ``images`` (N, 32, 32, 3) uint8, integer labels, group ids."""

    name: str
    class_names: list[str]
    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def subset(self, mask: np.ndarray) -> "Domain":
        """The images where ``mask`` is true."""
        return Domain(
            self.name, self.class_names, self.images[mask], self.labels[mask], self.groups[mask]
        )

    def counts(self) -> dict[str, int]:
        """Images per class."""
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.class_names)}


# --- Fashion-MNIST -----------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX array (the MNIST file format)."""
    with gzip.open(path, "rb") as stream:
        data = stream.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(split: str) -> Domain:
    """Fashion-MNIST ``train`` (60k) or ``t10k`` (10k) images, 10 garment classes."""
    images = read_idx(FASHION_DIR / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    rgb = np.stack([_grey_to_pixels(img) for img in images])
    groups = np.array([f"{split}:{i}" for i in range(len(images))])
    return Domain("garments", list(FASHION_CLASSES), rgb, labels, groups)


def _grey_to_pixels(grey: np.ndarray) -> np.ndarray:
    return square_pixels(Image.fromarray(grey, "L").convert("RGB"), SIZE)


# --- scikit-learn digits ------------------------------------------------------------------


def handwritten_digits() -> Domain:
    """scikit-learn's 1,797 8x8 handwritten digits, dark ink on white, 10 classes."""
    from sklearn.datasets import load_digits  # build-time dependency only

    digits = load_digits()
    ink = (255 - digits.images * 255 / 16).clip(0, 255).astype(np.uint8)
    rgb = np.stack([_grey_to_pixels(img) for img in ink])
    groups = np.array([f"digit:{i}" for i in range(len(rgb))])
    return Domain(
        "digits", [str(d) for d in range(10)], rgb, digits.target.astype(np.int64), groups
    )


# --- Clip art -----------------------------------------------------------------------------


def clipart(
    name: str,
    classes: dict[str, Sequence[str]],
    max_per_class: int = 10_000,
    seed: int = 0,
) -> Domain:
    """Clip-art PNGs by class, each class a list of folders under openclipart's png tree.

    A folder ending in ``/.`` takes only the files directly in it. Symlinks (duplicates),
    undecodable files and decompression bombs are skipped.
    """
    rng = np.random.default_rng(seed)
    files: list[tuple[int, Path]] = []
    for label, folders in enumerate(classes.values()):
        found: list[Path] = []
        for folder in folders:
            if folder.endswith("/."):
                paths = (CLIPART_DIR / folder[:-2]).glob("*.png")
            else:
                paths = (CLIPART_DIR / folder).rglob("*.png")
            found.extend(p for p in paths if not p.is_symlink())
        found = sorted(set(found))
        if len(found) > max_per_class:
            found = [found[i] for i in sorted(rng.choice(len(found), max_per_class, False))]
        files.extend((label, path) for path in found)
    with ThreadPoolExecutor(max_workers=4) as pool:
        pixels = list(pool.map(_clipart_pixels, [path for _, path in files]))
    kept = [
        (label, path, px) for (label, path), px in zip(files, pixels, strict=True) if px is not None
    ]
    return Domain(
        name,
        list(classes),
        np.stack([px for _, _, px in kept]),
        np.array([label for label, _, _ in kept], dtype=np.int64),
        np.array([f"{name}:{drawing_key(path)}" for _, path, _ in kept]),
    )


def drawing_key(path: Path) -> str:
    """One drawing's id: ``boat_01.png`` and ``boat_02.png`` (variants) share ``boat``."""
    return re.sub(r"_\d{2}$", "", path.stem.lower())


def _clipart_pixels(path: Path) -> np.ndarray | None:
    try:
        return square_pixels(open_rgb(path, max_pixels=40_000_000), SIZE)
    except (ImageRejected, OSError):
        return None


# --- Glyphs from font packages -------------------------------------------------------------

_LGC_FONTS = ("NotoSans-", "NotoSerif-", "DejaVuSans", "DejaVuSerif", "Liberation")
SCRIPTS: dict[str, tuple[tuple[tuple[int, int], ...], tuple[str, ...]]] = {
    # script: (code point ranges, font file name prefixes)
    "latin": (((0x41, 0x5A), (0x61, 0x7A)), _LGC_FONTS),
    "greek": (((0x391, 0x3A9), (0x3B1, 0x3C9)), _LGC_FONTS),
    "cyrillic": (((0x410, 0x44F),), _LGC_FONTS),
    "arabic": (((0x627, 0x64A),), ("NotoSansArabic", "NotoNaskhArabic", "NotoKufiArabic")),
    "hebrew": (((0x5D0, 0x5EA),), ("NotoSansHebrew", "NotoSerifHebrew", "NotoRashiHebrew")),
    "devanagari": (((0x905, 0x939),), ("NotoSansDevanagari", "NotoSerifDevanagari")),
    "thai": (((0xE01, 0xE2E),), ("NotoSansThai", "NotoSerifThai", "NotoLoopedThai")),
    "georgian": (((0x10D0, 0x10F0),), ("NotoSansGeorgian", "NotoSerifGeorgian")),
    "armenian": (((0x531, 0x556), (0x561, 0x586)), ("NotoSansArmenian", "NotoSerifArmenian")),
    "ethiopic": (((0x1200, 0x1248),), ("NotoSansEthiopic", "NotoSerifEthiopic")),
    "bengali": (((0x995, 0x9B9),), ("NotoSansBengali", "NotoSerifBengali")),
    "tamil": (((0xB95, 0xBB9),), ("NotoSansTamil-", "NotoSerifTamil-")),
    "gujarati": (((0xA95, 0xAB9),), ("NotoSansGujarati", "NotoSerifGujarati")),
    "kannada": (((0xC95, 0xCB9),), ("NotoSansKannada", "NotoSerifKannada")),
    "telugu": (((0xC15, 0xC39),), ("NotoSansTelugu", "NotoSerifTelugu")),
    "khmer": (((0x1780, 0x17A2),), ("NotoSansKhmer", "NotoSerifKhmer")),
    "myanmar": (((0x1000, 0x1020),), ("NotoSansMyanmar", "NotoSerifMyanmar")),
    "sinhala": (((0xD9A, 0xDC6),), ("NotoSansSinhala", "NotoSerifSinhala")),
}  # fmt: skip


def script_fonts(script: str) -> list[Path]:
    """Font files (sorted) that render a script, from the installed font packages."""
    prefixes = SCRIPTS[script][1]
    found = {
        path
        for folder in FONT_DIRS
        if folder.is_dir()
        for path in folder.rglob("*")
        if path.suffix in (".ttf", ".otf")
        and path.name.startswith(prefixes)
        and "Mono" not in path.name
        and "Condensed" not in path.name
    }
    return sorted(found)


def glyphs(name: str, scripts: Iterable[str], per_class: int, seed: int = 0) -> Domain:
    """Characters of each script rendered in the script's fonts: one class per script.

    Each image: a random character of the script, random font, size, offset and slight
    rotation, dark ink on a light background. The group is the font file, so a split by
    group tests on fonts never seen in training.
    """
    rng = np.random.default_rng(seed)
    scripts = list(scripts)
    images, labels, groups = [], [], []
    for label, script in enumerate(scripts):
        fonts = script_fonts(script)
        if not fonts:
            raise FileNotFoundError(f"no font for {script}: apt-get install fonts-noto-core")
        chars = [chr(c) for lo, hi in SCRIPTS[script][0] for c in range(lo, hi + 1)]
        drawable = {font: _drawable(font, chars) for font in fonts}
        for i in range(per_class):
            font = fonts[i % len(fonts)]
            if not drawable[font]:
                continue
            char = drawable[font][rng.integers(len(drawable[font]))]
            images.append(_render(font, char, rng))
            labels.append(label)
            groups.append(f"{name}:{font.name}")
    return Domain(name, scripts, np.stack(images), np.array(labels), np.array(groups))


def _drawable(font_path: Path, chars: list[str]) -> list[str]:
    """Characters the font really has (not blank, not its 'missing glyph' box)."""
    font = ImageFont.truetype(str(font_path), 32)

    def ink(char: str) -> bytes:
        image = Image.new("L", (48, 48))
        ImageDraw.Draw(image).text((24, 24), char, font=font, fill=255, anchor="mm")
        return image.tobytes()

    missing = ink("\U0010fffd")
    return [c for c in chars if (pixels := ink(c)) != missing and any(pixels)]


def _render(font_path: Path, char: str, rng: np.random.Generator) -> np.ndarray:
    canvas = 64
    font = ImageFont.truetype(str(font_path), int(rng.integers(30, 46)))
    background = int(rng.integers(215, 256))
    image = Image.new("L", (canvas, canvas), background)
    offset = rng.integers(-5, 6, size=2)
    ImageDraw.Draw(image).text(
        (canvas / 2 + offset[0], canvas / 2 + offset[1]),
        char,
        font=font,
        fill=int(rng.integers(0, 70)),
        anchor="mm",
    )
    image = image.rotate(
        float(rng.uniform(-10, 10)), Image.Resampling.BILINEAR, fillcolor=background
    )
    return square_pixels(image.convert("RGB"), SIZE)


# --- splitting ----------------------------------------------------------------------------


def split_by_group(domain: Domain, heldout_fraction: float, seed: int) -> tuple[Domain, Domain]:
    """(train, held-out): whole groups go to one side, per class, deterministically."""
    rng = np.random.default_rng(seed)
    heldout = np.zeros(len(domain.labels), dtype=bool)
    for label in range(len(domain.class_names)):
        in_class = domain.labels == label
        class_groups = np.unique(domain.groups[in_class])
        chosen = rng.permutation(class_groups)[
            : max(1, round(len(class_groups) * heldout_fraction))
        ]
        heldout |= in_class & np.isin(domain.groups, chosen)
    return domain.subset(~heldout), domain.subset(heldout)
