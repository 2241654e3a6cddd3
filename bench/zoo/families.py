"""Image families available offline, as 32x32 RGB arrays with a group id per image.

A *family* is one source of images with one style: one Debian package or one dataset. Groups
are what a split must keep together: one clip-art drawing and its ``_01``/``_02`` variants,
one font file, one animated unit's frames, one icon's sizes. Nothing here downloads anything;
the Debian packages each loader reads are listed in ``PACKAGES`` and in docs/zoo.md.
"""

import gzip
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from app.imaging.images import ImageRejected, open_rgb, square_pixels, to_rgb

SIZE = 32
CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "families"

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CLIPART_DIR = Path("/usr/share/openclipart/png")
FONT_DIRS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype"))
WESNOTH_DIR = Path("/usr/share/games/wesnoth/1.16/data/core/images")
ICONS_DIR = Path("/usr/share/icons")
SUPERTUX_DIR = Path("/usr/share/games/supertux2/images")
HEDGEWARS_DIR = Path("/usr/share/games/hedgewars/Data")
GAMES_DIR = Path("/usr/share/games")

# Debian packages per family (the build's `apt-get install` line is their union).
PACKAGES: dict[str, str] = {
    "fashion": "dataset-fashion-mnist",
    "digits": "(scikit-learn's bundled load_digits)",
    "glyphs": "fonts-noto-core",
    "clipart": "openclipart-png",
    "wesnoth": "wesnoth-1.16-data",
    "papirus": "papirus-icon-theme",
    "breeze": "breeze-icon-theme",
    "tango": "tango-icon-theme",
    "oxygen": "oxygen-icon-theme",
    "supertux": "supertux-data",
    "hedgewars": "hedgewars-data",
    "numix": "numix-icon-theme",
    "gnome": "gnome-icon-theme",
    "crawl": "crawl-tiles-data",
    "pingus": "pingus-data",
    "lincity": "lincity-ng-data",
    "frozen_bubble": "frozen-bubble-data",
    "freeciv": "freeciv-data",
    # Families only targets use (issue 27: more families no source and no reference saw).
    "mate": "mate-icon-theme",
    "yaru": "yaru-theme-icon",
    "elementary_xfce": "elementary-xfce-icon-theme",
    "endless_sky": "endless-sky-data",
    "freedroid": "freedroidrpg-data",
    "minetest": "minetest-data",
    "marble": "marble-data",
    "warmux": "warmux-data",
    "neverball": "neverball-data",
}

FASHION_CLASSES = (
    "tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
)  # fmt: skip


@dataclass
class Domain:
    """Images of one family: ``images`` (N, 32, 32, 3) uint8, integer labels, group ids."""

    name: str
    class_names: list[str]
    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray) -> "Domain":
        """The images where ``mask`` (boolean or index array) selects."""
        return Domain(
            self.name, self.class_names, self.images[mask], self.labels[mask], self.groups[mask]
        )

    def counts(self) -> dict[str, int]:
        """Images per class."""
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.class_names)}

    def only(self, classes: Sequence[str], name: str | None = None) -> "Domain":
        """The images of ``classes`` only, relabelled 0..len(classes)-1 in that order."""
        old = [self.class_names.index(c) for c in classes]
        mask = np.isin(self.labels, old)
        remap = np.full(len(self.class_names), -1, dtype=np.int64)
        remap[old] = np.arange(len(old))
        return Domain(
            name or self.name,
            list(classes),
            self.images[mask],
            remap[self.labels[mask]],
            self.groups[mask],
        )

    def map_images(self, transform: Callable[[np.ndarray], np.ndarray], name: str) -> "Domain":
        """The same images passed through ``transform`` (a shift of the family's style)."""
        return Domain(name, self.class_names, transform(self.images), self.labels, self.groups)


def concat(
    name: str,
    parts: dict[str, Domain],
    class_names: list[str] | None = None,
) -> Domain:
    """Several named domains as one; labels are offset so each part keeps its own classes
    (``part:class``), unless ``class_names`` is given (every part's classes must be in it)."""
    images, labels, groups, names = [], [], [], []
    for part_name, part in parts.items():
        if class_names is None:
            labels.append(part.labels + len(names))
            names.extend(f"{part_name}:{c}" for c in part.class_names)
        else:
            labels.append(np.array([class_names.index(c) for c in part.class_names])[part.labels])
        images.append(part.images)
        groups.append(np.char.add(f"{part_name}/", part.groups.astype(str)))
    return Domain(
        name,
        class_names or names,
        np.concatenate(images),
        np.concatenate(labels).astype(np.int64),
        np.concatenate(groups),
    )


def cached(loader: Callable[..., Domain]) -> Callable[..., Domain]:
    """Keep a loader's result in ``bench/.cache`` (decoding is slow), keyed by its arguments
    and by this file's contents, so that editing a loader never serves a stale result."""

    def wrapper(*args: object, **kwargs: object) -> Domain:
        code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
        key = json.dumps([loader.__name__, code, args, kwargs], sort_keys=True, default=str)
        path = CACHE_DIR / f"{loader.__name__}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
        if path.exists():
            data = np.load(path)
            return Domain(
                str(data["name"]),
                [str(c) for c in data["class_names"]],
                data["images"],
                data["labels"],
                data["groups"],
            )
        domain = loader(*args, **kwargs)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            name=domain.name,
            class_names=np.array(domain.class_names),
            images=domain.images,
            labels=domain.labels,
            groups=domain.groups,
        )
        return domain

    wrapper.__name__ = loader.__name__
    wrapper.__doc__ = loader.__doc__
    return wrapper


# --- decoding files ----------------------------------------------------------------------


def file_domain(
    name: str,
    files_by_class: dict[str, Iterable[Path]],
    group_of: Callable[[Path], str],
    max_per_class: int | None = None,
    seed: int = 0,
    crop: Callable[[Image.Image], Image.Image | None] | None = None,
) -> Domain:
    """Decode image files (PNG or SVG) per class into a domain; unusable files are skipped.

    Symlinks (duplicates in icon themes and clip art) are skipped; each class keeps at most
    ``max_per_class`` files, drawn at random by ``seed``.
    """
    rng = np.random.default_rng(seed)
    files: list[tuple[int, Path]] = []
    for label, paths in enumerate(files_by_class.values()):
        found = sorted({p for p in paths if not p.is_symlink()})
        if max_per_class is not None and len(found) > max_per_class:
            found = [found[i] for i in sorted(rng.choice(len(found), max_per_class, False))]
        files.extend((label, path) for path in found)
    with ThreadPoolExecutor(max_workers=4) as pool:
        pixels = list(pool.map(lambda path: decode(path, crop), [path for _, path in files]))
    kept = [
        (label, path, px) for (label, path), px in zip(files, pixels, strict=True) if px is not None
    ]
    if not kept:
        raise FileNotFoundError(f"{name}: no usable images (is its Debian package installed?)")
    return Domain(
        name,
        list(files_by_class),
        np.stack([px for _, _, px in kept]),
        np.array([label for label, _, _ in kept], dtype=np.int64),
        np.array([f"{name}:{group_of(path)}" for _, path, _ in kept]),
    )


def decode(
    path: Path, crop: Callable[[Image.Image], Image.Image | None] | None = None
) -> np.ndarray | None:
    """One file as 32x32 RGB on white, or None if it does not decode or is blank."""
    try:
        if path.suffix == ".svg":
            import cairosvg  # build-time dependency only

            png = cairosvg.svg2png(url=str(path), output_width=64, output_height=64)
            image = Image.open(io.BytesIO(png))
            image.load()
            image = to_rgb(image)
        else:
            image = open_rgb(path, max_pixels=40_000_000)
    except (ImageRejected, OSError, ValueError, SyntaxError, MemoryError):
        return None
    if crop is not None and (image := crop(image)) is None:
        return None
    pixels = square_pixels(image, SIZE)
    return None if pixels.min() == pixels.max() else pixels


def first_cell(cell: int) -> Callable[[Image.Image], Image.Image | None]:
    """Crop a sprite sheet to its first ``cell`` x ``cell`` frame (single frames pass as is)."""

    def crop(image: Image.Image) -> Image.Image:
        width, height = image.size
        if max(width, height) >= 2 * cell and min(width, height) <= 2 * cell:
            return image.crop((0, 0, min(width, cell), min(height, cell)))
        return image

    return crop


# --- Fashion-MNIST and scikit-learn digits -------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX array (the MNIST file format)."""
    with gzip.open(path, "rb") as stream:
        data = stream.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


@cached
def fashion_mnist(split: str) -> Domain:
    """Fashion-MNIST ``train`` (60k) or ``t10k`` (10k): light garments on black, 10 classes."""
    images = read_idx(FASHION_DIR / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    rgb = np.stack([_grey_to_pixels(img) for img in images])
    groups = np.array([f"{split}:{i}" for i in range(len(images))])
    return Domain("fashion", list(FASHION_CLASSES), rgb, labels, groups)


def _grey_to_pixels(grey: np.ndarray) -> np.ndarray:
    return square_pixels(Image.fromarray(grey, "L").convert("RGB"), SIZE)


@cached
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


@cached
def clipart(classes: dict[str, list[str]], max_per_class: int = 10_000, seed: int = 0) -> Domain:
    """Clip-art PNGs by class, each class a list of folders under openclipart's png tree.

    A folder ending in ``/.`` takes only the files directly in it.
    """
    files = {}
    for label, folders in classes.items():
        found: list[Path] = []
        for folder in folders:
            if folder.endswith("/."):
                found.extend((CLIPART_DIR / folder[:-2]).glob("*.png"))
            else:
                found.extend((CLIPART_DIR / folder).rglob("*.png"))
        files[label] = found
    return file_domain("clipart", files, drawing_key, max_per_class, seed)


def drawing_key(path: Path) -> str:
    """One drawing's id: ``boat_01.png`` and ``boat_02.png`` (variants) share ``boat``."""
    return re.sub(r"_\d{2}$", "", path.stem.lower())


# --- Glyphs from font packages -------------------------------------------------------------

_LGC_FONTS = ("NotoSans-", "NotoSerif-", "NotoSansDisplay-", "NotoSerifDisplay-", "DejaVu")
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
    "telugu": (((0xC15, 0xC39),), ("NotoSansTelugu", "NotoSerifTelugu")),
    "myanmar": (((0x1000, 0x1020),), ("NotoSansMyanmar", "NotoSerifMyanmar")),
    "sinhala": (((0xD9A, 0xDC6),), ("NotoSansSinhala", "NotoSerifSinhala")),
    "lao": (((0xE81, 0xEAE),), ("NotoSansLao", "NotoSerifLao", "NotoLoopedLao")),
    "malayalam": (((0xD15, 0xD39),), ("NotoSansMalayalam", "NotoSerifMalayalam")),
    "gurmukhi": (((0xA15, 0xA39),), ("NotoSansGurmukhi", "NotoSerifGurmukhi")),
    "bengali": (((0x995, 0x9B9),), ("NotoSansBengali", "NotoSerifBengali")),
    "tamil": (((0xB95, 0xBB9),), ("NotoSansTamil-", "NotoSerifTamil-")),
    "gujarati": (((0xA95, 0xAB9),), ("NotoSansGujarati", "NotoSerifGujarati")),
    "kannada": (((0xC95, 0xCB9),), ("NotoSansKannada", "NotoSerifKannada")),
    "khmer": (((0x1780, 0x17A2),), ("NotoSansKhmer", "NotoSerifKhmer")),
    "cherokee": (((0x13A0, 0x13F4),), ("NotoSansCherokee",)),
    "oriya": (((0xB15, 0xB39),), ("NotoSansOriya",)),
    "thaana": (((0x780, 0x7A5),), ("NotoSansThaana",)),
    "javanese": (((0xA984, 0xA9B2),), ("NotoSansJavanese",)),
    "adlam": (((0x1E900, 0x1E943),), ("NotoSansAdlam-",)),
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


@cached
def glyphs(classes: dict[str, tuple[str, str]], per_class: int, seed: int = 0) -> Domain:
    """Characters rendered from font files, one class per entry ``name: (script, chars)``.

    ``chars`` empty means every character of the script. Each image: a random character of
    its class, random font of the script, size, offset and slight rotation, dark ink on a
    light background. The group is the font file, so a split by group tests on unseen fonts.
    """
    rng = np.random.default_rng(seed)
    images, labels, groups = [], [], []
    for label, (script, chars) in enumerate(classes.values()):
        fonts = script_fonts(script)
        if not fonts:
            raise FileNotFoundError(f"no font for {script}: apt-get install fonts-noto-core")
        wanted = list(chars) or [chr(c) for lo, hi in SCRIPTS[script][0] for c in range(lo, hi + 1)]
        drawable = {font: _drawable(font, wanted) for font in fonts}
        fonts = [font for font in fonts if drawable[font]]
        for i in range(per_class):
            font = fonts[i % len(fonts)]
            char = drawable[font][rng.integers(len(drawable[font]))]
            images.append(_render(font, char, rng))
            labels.append(label)
            groups.append(f"glyphs:{font.name}")
    return Domain("glyphs", list(classes), np.stack(images), np.array(labels), np.array(groups))


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


# --- Game sprites ---------------------------------------------------------------------------


def _unit_name(path: Path) -> str:
    """A unit's name from one of its frames: ``bowman-bow-attack-1`` -> ``bowman``."""
    return f"{path.parent.name}/{path.stem.split('-')[0]}"


@cached
def wesnoth_units(races: Sequence[str], max_per_class: int = 10_000, seed: int = 0) -> Domain:
    """Battle for Wesnoth unit sprites (every animation frame), one class per race folder.

    A unit's frames are one group, so a split by group tests on unseen units.
    """
    files = {race: (WESNOTH_DIR / "units" / race).rglob("*.png") for race in races}
    return file_domain("wesnoth", files, _unit_name, max_per_class, seed)


@cached
def wesnoth_terrain(kinds: Sequence[str], max_per_class: int = 10_000, seed: int = 0) -> Domain:
    """Battle for Wesnoth terrain tiles, one class per terrain folder (hexes on white)."""
    files = {kind: (WESNOTH_DIR / "terrain" / kind).rglob("*.png") for kind in kinds}
    group = lambda path: re.sub(r"[-\d]+$", "", path.stem)  # noqa: E731 (variants share a stem)
    return file_domain("wesnoth", files, group, max_per_class, seed)


@cached
def supertux(classes: dict[str, list[str]], max_per_class: int = 10_000, seed: int = 0) -> Domain:
    """SuperTux sprites and tiles: each class a list of folders under its images tree.

    Sprite sheets are cut to their first 32 px frame; a creature's or object's frames
    (one folder) are one group.
    """
    files = {
        label: [p for folder in folders for p in (SUPERTUX_DIR / folder).rglob("*.png")]
        for label, folders in classes.items()
    }
    group = lambda path: str(path.parent.relative_to(SUPERTUX_DIR))  # noqa: E731
    return file_domain("supertux", files, group, max_per_class, seed, crop=first_cell(32))


@cached
def hedgewars(classes: dict[str, list[str]], max_per_class: int = 10_000, seed: int = 0) -> Domain:
    """Hedgewars graphics: each class a list of glob patterns under its Data folder."""
    files = {
        label: [p for pattern in patterns for p in HEDGEWARS_DIR.glob(pattern)]
        for label, patterns in classes.items()
    }
    group = lambda path: re.sub(r"(@2x|[LR]|\d+)$", "", path.stem)  # noqa: E731
    return file_domain("hedgewars", files, group, max_per_class, seed, crop=first_cell(32))


# --- Icon themes ----------------------------------------------------------------------------

ICON_LAYOUTS: dict[str, tuple[str, ...]] = {
    # theme: folders of one context ({context} is filled in), preferred size first
    "papirus": ("Papirus/64x64/{context}", "Papirus/48x48/{context}"),
    "breeze": tuple(f"breeze/{{context}}/{size}" for size in (64, 48, 32, 22)),
    "tango": ("Tango/scalable/{context}", "Tango/32x32/{context}"),
    "oxygen": tuple(f"oxygen/base/{s}x{s}/{{context}}" for s in (64, 48, 32, 22)),
    "gnome": tuple(f"gnome/{s}x{s}/{{context}}" for s in (48, 32, 256, 24)),
    "mate": ("mate/48x48/{context}", "mate/32x32/{context}"),
    "yaru": ("Yaru/48x48/{context}", "Yaru/scalable/{context}"),
    "elementary_xfce": tuple(f"elementary-xfce/{{context}}/{size}" for size in (48, 64, 32)),
}


@cached
def icon_theme(
    theme: str, contexts: Sequence[str], max_per_class: int = 10_000, seed: int = 0
) -> Domain:
    """One icon theme, one class per context folder (apps, places, devices ...).

    Each icon name is taken once, at the preferred size it exists in; its name is its group.
    Symbolic (monochrome) variants are skipped.
    """
    files: dict[str, list[Path]] = {}
    for context in contexts:
        by_name: dict[str, Path] = {}
        for layout in ICON_LAYOUTS[theme]:
            folder = ICONS_DIR / layout.format(context=context)
            for path in sorted(folder.glob("*.*")) if folder.is_dir() else ():
                usable = path.suffix in (".png", ".svg") and "symbolic" not in path.name
                if usable and not path.is_symlink():
                    by_name.setdefault(path.stem, path)
        files[context] = list(by_name.values())
    group = lambda path: path.stem  # noqa: E731
    return file_domain(theme, files, group, max_per_class, seed)


# --- Game and map packages, one class per list of folders ------------------------------------


def _frame_stem(path: Path) -> str:
    """A file's name without its frame or variant marks: ``afterburner+3`` -> ``afterburner``."""
    return re.sub(r"[-_+=. ]*\d+$", "", path.stem) or path.stem


@cached
def package_images(
    name: str,
    classes: dict[str, list[str]],
    group_by: str = "stem",
    max_per_class: int = 10_000,
    seed: int = 0,
) -> Domain:
    """Images of one Debian package: each class a list of glob patterns under /usr/share.

    ``group_by``: ``"stem"`` keeps an animation's frames together (a name without trailing
    frame numbers), ``"folder"`` keeps a folder together (an item's rotations, a character's
    frames). Sprite sheets are cut to their first 64 px frame.
    """
    root = Path("/usr/share")
    files = {
        label: [p for pattern in patterns for p in root.glob(pattern)
                if p.suffix.lower() in (".png", ".jpg", ".svg")]
        for label, patterns in classes.items()
    }  # fmt: skip
    group = _frame_stem if group_by == "stem" else (lambda path: str(path.parent))
    return file_domain(name, files, group, max_per_class, seed, crop=first_cell(64))


# --- Sprite sheets cut into tiles -----------------------------------------------------------

CRAWL_DIR = Path("/usr/share/crawl/dat/tiles")


@cached
def crawl_tiles(classes: dict[str, str], cell: int = 32) -> Domain:
    """Dungeon Crawl tiles, one class per sprite sheet, cut on a ``cell`` px grid.

    Cells that are mostly transparent or flat are dropped; a cell's group is its row of the
    sheet, so neighbouring variants stay on one side of a split.
    """
    images, labels, groups = [], [], []
    for label, sheet in enumerate(classes.values()):
        rgba = Image.open(CRAWL_DIR / f"{sheet}.png").convert("RGBA")
        width, height = rgba.size
        for top in range(0, height - cell + 1, cell):
            for left in range(0, width - cell + 1, cell):
                tile = rgba.crop((left, top, left + cell, top + cell))
                if np.asarray(tile)[..., 3].mean() < 0.25 * 255:
                    continue
                pixels = square_pixels(to_rgb(tile), SIZE)
                if pixels.std() < 8:
                    continue
                images.append(pixels)
                labels.append(label)
                groups.append(f"crawl:{sheet}:{top}")
    return Domain("crawl", list(classes), np.stack(images), np.array(labels), np.array(groups))


# --- Unlabelled pool for the reference network ---------------------------------------------

POOL_SOURCES: dict[str, list[str]] = {
    # family: glob patterns (relative to /usr/share) of images no source and no target uses
    "numix": ["icons/Numix/48/*/*.svg"],
    "pingus": ["games/pingus/**/*.png"],
    "lincity": ["games/lincity-ng/**/*.png"],
    "frozen_bubble": ["games/frozen-bubble/**/*.png"],
    "freeciv": ["games/freeciv/flags/*.png", "games/freeciv/buildings/*.png",
                "games/freeciv/*/units/*.png", "games/freeciv/misc/*.png"],
}  # fmt: skip


@cached
def reference_pool(max_per_family: int, seed: int = 0) -> Domain:
    """Images from packages that no source and no target of the zoo uses, labelled by the
    package they come from (never by what they show, so no label echoes a zoo's class); the
    self-supervised reference ignores the labels."""
    root = Path("/usr/share")
    files: dict[str, list[Path]] = {}
    for family, patterns in POOL_SOURCES.items():
        found = sorted({p for pattern in patterns for p in root.glob(pattern)})
        rng = np.random.default_rng(seed)
        if len(found) > max_per_family:
            found = [found[i] for i in sorted(rng.choice(len(found), max_per_family, False))]
        files[family] = found
    return file_domain("pool", files, lambda path: path.stem, None, seed, crop=first_cell(64))


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


def split_by_hash(domain: Domain, heldout_fraction: float) -> tuple[Domain, Domain]:
    """(train, held-out) by a hash of the group, so that every loader that shares groups
    (one font file rendering several scripts) puts each group on the same side."""

    def held_out(group: str) -> bool:
        digest = hashlib.sha256(group.encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < heldout_fraction

    heldout = np.array([held_out(g) for g in domain.groups.astype(str)])
    return domain.subset(~heldout), domain.subset(heldout)
