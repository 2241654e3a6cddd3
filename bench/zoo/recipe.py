"""What the bundled zoo is made of: the source models, the benchmark targets, the shifts.

Every family is split once, by group, into a *source side* (70 %) that sources may train
on and a *target side* (30 %) that only targets draw from; Fashion-MNIST's own split plays
that role for garments (``train`` / ``t10k``). Families that only targets use, and the
packages the reference network trains on, are disjoint from everything else. No two targets
share an image: each takes its images out of what earlier targets left.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
from PIL import Image

from bench.zoo import families as fam
from bench.zoo.families import Domain

HELDOUT_FRACTION = 0.3
TEST_PER_CLASS = 30

SOURCE_SCRIPTS = (
    "latin", "greek", "cyrillic", "arabic", "hebrew", "devanagari",
    "thai", "georgian", "armenian", "ethiopic", "telugu", "myanmar",
)  # fmt: skip
SMALL_SCRIPTS = ("sinhala", "lao", "malayalam", "gurmukhi")
UNSEEN_SCRIPTS = (
    "bengali", "tamil", "gujarati", "kannada", "khmer",
    "cherokee", "oriya", "thaana", "javanese", "adlam",
)  # fmt: skip
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
SOURCE_LETTERS = LETTERS[:20]  # a..t; u..z appear only in targets
CLIPART_TOP = (
    "animals", "buildings", "computer", "food", "people",
    "recreation", "shapes", "signs_and_symbols", "transportation",
)  # fmt: skip
CLIPART_UNSEEN = ("office", "tools", "geography", "education", "plants")  # targets only
WESNOTH_RACES = (
    "drakes", "dwarves", "elves-wood", "human-loyalists", "human-magi", "human-outlaws",
    "monsters", "orcs", "saurians", "undead", "undead-skeletal",
)  # fmt: skip
WESNOTH_UNSEEN_RACES = ("nagas", "goblins", "dunefolk", "undead-necromancers")
WESNOTH_TERRAIN = (
    "castle", "cave", "chasm", "flat", "forest", "grass", "hills", "interior",
    "mountains", "sand", "village", "walls", "water", "bridge",
)  # fmt: skip
PAPIRUS_CONTEXTS = ("apps", "places", "mimetypes", "devices")
BREEZE_CONTEXTS = ("actions", "apps", "mimetypes", "places", "preferences", "status", "devices")


# --- the families, split once ------------------------------------------------------------


@cache
def sides(family: str, seed: int = 0) -> tuple[Domain, Domain]:
    """(source side, target side) of a family that sources train on."""
    split = lambda d: fam.split_by_group(d, HELDOUT_FRACTION, seed)  # noqa: E731
    # Loaders that share groups (a font file, a clip-art drawing) split them by a hash of the
    # group, so that every loader puts a group on the same side.
    by_hash = lambda d: fam.split_by_hash(d, HELDOUT_FRACTION)  # noqa: E731
    if family == "fashion":
        return fam.fashion_mnist("train"), fam.fashion_mnist("t10k")
    if family == "digits":
        return split(fam.handwritten_digits())
    if family == "scripts":
        scripts = SOURCE_SCRIPTS + SMALL_SCRIPTS
        return by_hash(fam.glyphs({s: (s, "") for s in scripts}, 1600, seed))
    if family == "letters":
        classes = {c: ("latin", c.upper() + c) for c in LETTERS}
        return by_hash(fam.glyphs(classes, 420, seed))
    if family == "font_digits":
        return by_hash(fam.glyphs({str(d): ("latin", str(d)) for d in range(10)}, 160, seed))
    if family == "clipart":
        seen, unseen = (
            fam.clipart({f: [f] for f in names}, max_per_class=400, seed=seed)
            for names in (CLIPART_TOP, CLIPART_UNSEEN)
        )
        source, target = by_hash(seen)
        return source, fam.concat(
            "clipart", {"seen": target, "unseen": unseen}, [*CLIPART_TOP, *CLIPART_UNSEEN]
        )
    if family == "clipart_sub":
        folders = {
            "birds": ["animals/birds"], "bugs": ["animals/bugs"], "fish": ["animals/fish"],
            "mammals": ["animals/mammals"], "beverages": ["food/beverages"],
            "breads": ["food/breads_and_carbs"], "desserts": ["food/desserts"],
            "fruit_veg": ["food/fruit", "food/vegetables"],
            "meat_dairy": ["food/meats_and_eggs", "food/dairy"],
        }  # fmt: skip
        return by_hash(fam.clipart(folders, seed=seed))
    if family == "wesnoth_units":
        source, target = split(fam.wesnoth_units(WESNOTH_RACES))
        unseen = fam.wesnoth_units(WESNOTH_UNSEEN_RACES)
        return source, fam.concat("wesnoth", {"seen": target, "unseen": unseen},
                                  [*WESNOTH_RACES, *WESNOTH_UNSEEN_RACES])  # fmt: skip
    if family == "wesnoth_terrain":
        return split(fam.wesnoth_terrain(WESNOTH_TERRAIN))
    if family == "papirus":
        return split(fam.icon_theme("papirus", PAPIRUS_CONTEXTS, 2500, seed))
    if family == "breeze":
        return split(fam.icon_theme("breeze", BREEZE_CONTEXTS))
    raise KeyError(family)


def source_side(family: str, classes: tuple[str, ...] | None = None) -> Domain:
    """The source side of a family, optionally restricted to some classes."""
    domain = sides(family)[0]
    return domain if classes is None else domain.only(classes)


def cap(domain: Domain, per_class: int, seed: int = 0) -> Domain:
    """At most ``per_class`` images of every class (random, by seed)."""
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [
            rng.permutation(np.flatnonzero(domain.labels == c))[:per_class]
            for c in range(len(domain.class_names))
        ]
    )
    return domain.subset(np.sort(keep))


def relabel(domain: Domain, classes: dict[str, tuple[str, ...]], name: str | None = None) -> Domain:
    """Merge classes: ``{new: (old, ...)}``; images of unlisted classes are dropped."""
    old_to_new = {old: i for i, olds in enumerate(classes.values()) for old in olds}
    mapping = np.array([old_to_new.get(c, -1) for c in domain.class_names])
    labels = mapping[domain.labels]
    keep = labels >= 0
    return Domain(
        name or domain.name,
        list(classes),
        domain.images[keep],
        labels[keep],
        domain.groups[keep],
    )


# --- sources -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    """One source model of the zoo: its name, families and training data."""

    name: str
    families: tuple[str, ...]
    description: str
    data: Callable[[], Domain]


def _mixed_large() -> Domain:
    parts = {
        "fashion": cap(source_side("fashion"), 500),
        "scripts": cap(source_side("scripts", SOURCE_SCRIPTS), 400),
        "clipart": cap(source_side("clipart", CLIPART_TOP), 200),
        "wesnoth": cap(source_side("wesnoth_units"), 300),
        "terrain": cap(source_side("wesnoth_terrain"), 150),
        "papirus": cap(source_side("papirus"), 800),
        "breeze": cap(source_side("breeze"), 150),
        "digits": source_side("digits"),
    }
    return fam.concat("mixed", parts)


def _mixed_families_small() -> Domain:
    parts = {
        "fashion": source_side("fashion"),
        "glyphs": source_side("scripts", SOURCE_SCRIPTS),
        "clipart": source_side("clipart", CLIPART_TOP),
        "wesnoth": source_side("wesnoth_units"),
        "papirus": source_side("papirus"),
        "breeze": source_side("breeze"),
    }
    rng = np.random.default_rng(0)
    picked = {}
    for name, part in parts.items():
        index = np.sort(rng.permutation(len(part))[:100])
        picked[name] = Domain(
            name, [name], part.images[index], np.zeros(len(index), np.int64), part.groups[index]
        )
    return fam.concat("mixed_families", picked, class_names=list(parts))


def _icons() -> Domain:
    contexts = ["apps", "places", "mimetypes", "devices"]
    parts = {
        "papirus": cap(source_side("papirus", tuple(contexts)), 300),
        "breeze": source_side("breeze", tuple(contexts)),
    }
    return fam.concat("icons", parts, class_names=contexts)


def _digits_two_styles() -> Domain:
    parts = {"handwritten": source_side("digits"), "fonts": source_side("font_digits")}
    return fam.concat("digits2", parts, class_names=[str(d) for d in range(10)])


SOURCES: tuple[SourceSpec, ...] = (
    SourceSpec("fashion_54k", ("fashion",), "Fashion-MNIST train, all 10 classes",
               lambda: source_side("fashion")),
    SourceSpec("fashion_9k", ("fashion",),
               "Fashion-MNIST train, 1,000 per class before the 10 % held out",
               lambda: cap(source_side("fashion"), 1000)),
    SourceSpec("fashion_tops_2700", ("fashion",), "Fashion-MNIST tops and dresses",
               lambda: cap(source_side("fashion", ("tshirt", "pullover", "dress", "coat",
                                                   "shirt")), 600)),
    SourceSpec("fashion_feet_270", ("fashion",), "Fashion-MNIST shoes, bags, trousers",
               lambda: cap(source_side("fashion", ("sandal", "sneaker", "boot", "bag",
                                                   "trouser")), 60)),
    SourceSpec("scripts_9k", ("glyphs",), "glyphs of 12 scripts, one class per script",
               lambda: cap(source_side("scripts", SOURCE_SCRIPTS), 1000)),
    SourceSpec("scripts_280", ("glyphs",), "glyphs of 4 other scripts",
               lambda: cap(source_side("scripts", SMALL_SCRIPTS), 100)),
    SourceSpec("letters_4400", ("glyphs",), "Latin letters a-t, one class per letter",
               lambda: cap(source_side("letters", SOURCE_LETTERS), 250)),
    SourceSpec("digits_1100", ("digits",), "scikit-learn handwritten digits",
               lambda: source_side("digits")),
    SourceSpec("digits_two_styles_2k", ("digits", "glyphs"),
               "handwritten digits and digits rendered from fonts, one class per digit",
               _digits_two_styles),
    SourceSpec("clipart_1700", ("clipart",), "clip art, one class per top-level category",
               lambda: cap(source_side("clipart", CLIPART_TOP), 300)),
    SourceSpec("clipart_food_160", ("clipart",), "clip-art food by kind",
               lambda: source_side("clipart_sub", ("beverages", "breads", "desserts",
                                                   "fruit_veg", "meat_dairy"))),
    SourceSpec("clipart_animals_150", ("clipart",), "clip-art animals by kind",
               lambda: source_side("clipart_sub", ("birds", "bugs", "fish", "mammals"))),
    SourceSpec("wesnoth_units_2600", ("wesnoth",), "Wesnoth unit sprites, one class per race",
               lambda: cap(source_side("wesnoth_units"), 400)),
    SourceSpec("wesnoth_units_370", ("wesnoth",), "Wesnoth units of 4 races",
               lambda: cap(source_side("wesnoth_units", ("drakes", "dwarves", "undead",
                                                         "saurians")), 100)),
    SourceSpec("wesnoth_terrain_2k", ("wesnoth",), "Wesnoth terrain tiles by kind",
               lambda: cap(source_side("wesnoth_terrain"), 300)),
    SourceSpec("papirus_2800", ("papirus",), "Papirus icons by context",
               lambda: cap(source_side("papirus"), 1500)),
    SourceSpec("papirus_460", ("papirus",), "Papirus icons by context, small",
               lambda: cap(source_side("papirus", ("apps", "places", "mimetypes")), 170)),
    SourceSpec("breeze_1400", ("breeze",), "Breeze icons by context",
               lambda: source_side("breeze")),
    SourceSpec("icons_1200", ("papirus", "breeze"), "Papirus and Breeze icons by context",
               _icons),
    SourceSpec("mixed_17k", ("fashion", "glyphs", "clipart", "wesnoth", "papirus", "breeze",
                             "digits"),
               "7 families (Wesnoth units and terrain apart), one class per part and class",
               _mixed_large),
    SourceSpec("mixed_families_540", ("fashion", "glyphs", "clipart", "wesnoth", "papirus",
                                      "breeze"),
               "6 families, one class per family", _mixed_families_small),
)  # fmt: skip


# --- shifts of a family's style ------------------------------------------------------------


def invert(images: np.ndarray) -> np.ndarray:
    """Polarity inversion (light on dark <-> dark on light)."""
    return 255 - images


def rotate(quarter_turns: int) -> Callable[[np.ndarray], np.ndarray]:
    """Rotation by multiples of 90 degrees."""
    return lambda images: np.ascontiguousarray(np.rot90(images, quarter_turns, axes=(1, 2)))


def tint(rgb: tuple[int, int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """A colour cast: white becomes ``rgb``, black stays black."""
    factor = np.array(rgb, dtype=np.float32) / 255
    return lambda images: (images.astype(np.float32) * factor).round().astype(np.uint8)


def zoom_out(scale: float) -> Callable[[np.ndarray], np.ndarray]:
    """Shrink the content to ``scale`` of the frame, centred, on the image's corner colour."""

    def shrink(images: np.ndarray) -> np.ndarray:
        size = images.shape[1]
        inner = max(4, round(size * scale))
        out = np.empty_like(images)
        for i, image in enumerate(images):
            canvas = Image.new("RGB", (size, size), tuple(int(v) for v in image[0, 0]))
            small = Image.fromarray(image).resize((inner, inner), Image.Resampling.BILINEAR)
            canvas.paste(small, ((size - inner) // 2, (size - inner) // 2))
            out[i] = np.asarray(canvas)
        return out

    return shrink


def colour_ink(seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Each image printed in a random colour on a random pale paper."""

    def paint(images: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        ink = rng.integers(0, 160, size=(len(images), 1, 1, 3)).astype(np.float32)
        paper = rng.integers(190, 256, size=(len(images), 1, 1, 3)).astype(np.float32)
        light = images.astype(np.float32).mean(-1, keepdims=True) / 255
        return (ink + (paper - ink) * light).round().astype(np.uint8)

    return paint


# --- targets -----------------------------------------------------------------------------

Kind = Literal["in_family", "shifted", "unseen_family"]


@dataclass(frozen=True)
class TargetSpec:
    """One benchmark target: where its images come from and how many train per class."""

    name: str
    kind: Kind
    family: str
    role: Literal["dev", "report"]
    train_per_class: int
    pool: Callable[[], Domain]  # images to draw from (already restricted to its classes)
    shift: Callable[[np.ndarray], np.ndarray] | None = None
    shift_name: str | None = None
    description: str = ""
    test_per_class: int = TEST_PER_CLASS


def target_side(family: str, classes: tuple[str, ...] | None = None) -> Callable[[], Domain]:
    """The target side of a source family, restricted to ``classes``."""
    return lambda: sides(family)[1] if classes is None else sides(family)[1].only(classes)


def unseen(loader: Callable[[], Domain], classes: dict[str, tuple[str, ...]] | None = None):
    """A family no source trains on, optionally with merged classes."""
    return lambda: loader() if classes is None else relabel(loader(), classes)


_OXYGEN = lambda: fam.icon_theme("oxygen", ("actions", "apps", "mimetypes", "status",  # noqa: E731
                                            "devices", "places"))  # fmt: skip
_SUPERTUX = lambda: fam.supertux({  # noqa: E731
    "creatures": ["creatures"], "tiles": ["tiles"], "objects": ["objects"],
    "worldmap": ["worldmap"],
})  # fmt: skip
_HEDGEWARS = lambda: fam.hedgewars({  # noqa: E731
    "hats": ["Graphics/Hats/*.png"], "flags": ["Graphics/Flags/*.png"],
    "themes": ["Themes/*/*.png"], "graphics": ["Graphics/*.png"],
})  # fmt: skip
_CRAWL = lambda: fam.crawl_tiles({  # noqa: E731
    "items": "main", "monsters": "player", "walls": "wall", "floors": "floor",
    "features": "feat",
})  # fmt: skip
_TANGO = lambda: fam.icon_theme("tango", ("actions", "apps", "categories", "devices",  # noqa: E731
                                          "emblems", "emotes", "mimetypes", "places",
                                          "status"))  # fmt: skip
_GNOME = lambda: fam.icon_theme("gnome", ("actions", "apps", "categories", "devices",  # noqa: E731
                                          "emblems", "emotes", "mimetypes", "places",
                                          "status"))  # fmt: skip
_ICON_MERGE = {
    "actions": ("actions",),
    "status": ("status", "emotes", "emblems"),
    "things": ("apps", "categories", "devices", "mimetypes", "places"),
}
_ENDLESS_SKY = lambda: fam.package_images("endless_sky", {  # noqa: E731
    f"{kind}s": [f"games/endless-sky/images/{kind}/**/*.{ext}" for ext in ("png", "jpg")]
    for kind in ("ship", "outfit", "land", "planet", "effect", "projectile")
})  # fmt: skip
_FREEDROID = lambda: fam.package_images("freedroid", {  # noqa: E731
    "droids": ["freedroidrpg/data/graphics/droids/*/*.png"],
    "weapons": ["freedroidrpg/data/graphics/items/weapons/*/*.jpg"],
    "armour": [f"freedroidrpg/data/graphics/items/{kind}/*/*.jpg"
               for kind in ("armours", "helmets", "shields")],
    "potions": ["freedroidrpg/data/graphics/items/pills_potions/*/*.jpg"],
    "tux_parts": ["freedroidrpg/data/graphics/tux_motion_parts/**/*.png"],
}, group_by="folder")  # fmt: skip
_MINETEST_GAME = "games/minetest/games/minetest_game/mods"
_MINETEST = lambda: fam.package_images("minetest", {  # noqa: E731
    "blocks": [f"{_MINETEST_GAME}/default/textures/*.png"],
    "test_nodes": ["games/minetest/games/devtest/mods/testnodes/textures/*.png"],
    "interface": ["games/minetest/textures/base/pack/*.png"],
    "plants_and_wool": [f"{_MINETEST_GAME}/{mod}/textures/*.png"
                        for mod in ("farming", "flowers", "wool", "dye")],
})  # fmt: skip
_MARBLE = lambda: fam.package_images("marble", {  # noqa: E731
    "flags": ["marble/data/flags/*.svg"],
    "road_shields": ["marble/data/bitmaps/osmcarto/shields/svg/*.svg"],
    "map_symbols": ["marble/data/svg/osmcarto/svg/*/*.svg"],
})  # fmt: skip
_WARMUX = lambda: fam.package_images("warmux", {  # noqa: E731
    "characters": ["games/warmux/body/*/*.png"],
    "weapons": ["games/warmux/weapon/**/*.png"],
    "menus": ["games/warmux/menu/**/*.png", "games/warmux/interface/**/*.png"],
    "maps": ["games/warmux/map/*/*.jpg", "games/warmux/map/*/*.png"],
}, group_by="folder")  # fmt: skip
_NEVERBALL = lambda: fam.package_images("neverball", {  # noqa: E731
    "materials": ["games/neverball/textures/mtrl/*"],
    "levels": ["games/neverball/shot-*/*"],
    "backgrounds": ["games/neverball/back/*"],
    "balls": ["games/neverball/ball/**/*.png"],
})  # fmt: skip
_MATE = lambda: fam.icon_theme("mate", ("actions", "apps", "mimetypes", "status"))  # noqa: E731
_YARU = lambda: fam.icon_theme("yaru", ("actions", "apps", "devices", "mimetypes"))  # noqa: E731
_XFCE = lambda: fam.icon_theme("elementary_xfce", ("actions", "apps", "devices",  # noqa: E731
                                                   "categories"))  # fmt: skip
_GARMENTS_ALIKE = ("tshirt", "pullover", "coat", "shirt", "dress")  # easily confused
_GARMENTS = fam.FASHION_CLASSES
_T = TargetSpec

TARGETS: tuple[TargetSpec, ...] = (
    # Held-out images of a source family (new classes where the name says so).
    _T("fashion", "in_family", "fashion", "report", 50, target_side("fashion", _GARMENTS_ALIKE),
       description="Fashion-MNIST t10k: 5 kinds of tops (the README's demo target)"),
    _T("fashion_fewshot", "in_family", "fashion", "dev", 10, target_side("fashion", _GARMENTS)),
    _T("digits_fewshot", "in_family", "digits", "dev", 10,
       target_side("digits", ("0", "1", "2", "3", "4"))),
    _T("unseen_scripts", "in_family", "glyphs", "report", 10,
       lambda: fam.glyphs({s: (s, "") for s in UNSEEN_SCRIPTS}, 120, 0),
       description="10 scripts no source saw"),
    _T("letters_fewshot", "in_family", "glyphs", "report", 10,
       target_side("letters", LETTERS[16:]),
       description="Latin letters q-z (u-z are no source's classes), unseen fonts"),
    _T("clipart_objects", "in_family", "clipart", "report", 10,
       target_side("clipart", CLIPART_UNSEEN), description="clip-art categories no source saw"),
    _T("clipart_fewshot", "in_family", "clipart", "report", 10,
       target_side("clipart", ("animals", "food", "people", "recreation",
                               "signs_and_symbols"))),
    _T("wesnoth_units", "in_family", "wesnoth", "report", 20,
       target_side("wesnoth_units", WESNOTH_UNSEEN_RACES),
       description="units of 4 races no source saw"),
    _T("wesnoth_terrain_fewshot", "in_family", "wesnoth", "dev", 10,
       target_side("wesnoth_terrain", ("castle", "water", "forest", "flat", "interior"))),
    _T("papirus_fewshot", "in_family", "papirus", "report", 10,
       target_side("papirus", ("apps", "places", "mimetypes"))),
    _T("breeze_fewshot", "in_family", "breeze", "dev", 10,
       target_side("breeze", ("actions", "apps", "status", "mimetypes"))),
    # Shifted versions of a source family.
    _T("fashion_inverted", "shifted", "fashion", "report", 50,
       target_side("fashion", _GARMENTS_ALIKE), invert, "inverted polarity",
       "dark tops on white, like product photos"),
    _T("fashion_rotated", "shifted", "fashion", "dev", 10, target_side("fashion", _GARMENTS),
       rotate(1), "rotated 90 degrees"),
    _T("digits_inverted", "shifted", "digits", "report", 10,
       target_side("digits", ("5", "6", "7", "8", "9")), invert, "inverted polarity"),
    _T("scripts_rotated", "shifted", "glyphs", "report", 10,
       target_side("scripts", ("latin", "greek", "cyrillic", "hebrew", "thai")), rotate(2),
       "rotated 180 degrees", "glyphs of source scripts, unseen fonts, upside down"),
    _T("clipart_tinted", "shifted", "clipart", "report", 10,
       target_side("clipart", ("shapes", "computer", "recreation")), tint((90, 150, 255)),
       "blue colour cast"),
    _T("wesnoth_small", "shifted", "wesnoth", "dev", 20,
       target_side("wesnoth_units", ("elves-wood", "orcs", "monsters", "undead-skeletal",
                                     "human-outlaws")), zoom_out(0.5), "zoomed out to half size"),
    _T("papirus_inverted", "shifted", "papirus", "report", 20,
       target_side("papirus", ("apps", "places")), invert, "inverted colours"),
    _T("letters_colour", "shifted", "glyphs", "dev", 10,
       target_side("letters", LETTERS[:10]), colour_ink(0), "coloured ink on coloured paper"),
    # Families no source (and not the reference network) was trained on.
    _T("oxygen", "unseen_family", "oxygen", "report", 50,
       unseen(lambda: _OXYGEN().only(("actions", "apps", "mimetypes", "status")))),
    _T("oxygen_fewshot", "unseen_family", "oxygen", "dev", 10,
       unseen(lambda: _OXYGEN().only(("actions", "devices", "places", "apps")))),
    _T("supertux", "unseen_family", "supertux", "report", 50,
       unseen(lambda: _SUPERTUX().only(("creatures", "tiles", "objects", "worldmap")))),
    _T("supertux_fewshot", "unseen_family", "supertux", "dev", 10,
       unseen(lambda: _SUPERTUX().only(("creatures", "objects", "tiles", "worldmap")))),
    _T("hedgewars", "unseen_family", "hedgewars", "report", 50, unseen(_HEDGEWARS)),
    _T("hedgewars_fewshot", "unseen_family", "hedgewars", "report", 10,
       unseen(lambda: _HEDGEWARS().only(("hats", "flags", "themes")))),
    _T("crawl", "unseen_family", "crawl", "report", 50, unseen(_CRAWL)),
    _T("crawl_fewshot", "unseen_family", "crawl", "report", 10, unseen(_CRAWL)),
    _T("tango_fewshot", "unseen_family", "tango", "report", 10, unseen(_TANGO, _ICON_MERGE)),
    _T("gnome_fewshot", "unseen_family", "gnome", "dev", 10, unseen(_GNOME, _ICON_MERGE)),
    # Added for issue 27 (split into dev and report before any of them ran): more shifted
    # versions of source families, and nine more families no source and no reference saw.
    _T("fashion_tinted", "shifted", "fashion", "report", 20,
       target_side("fashion", ("trouser", "sandal", "sneaker", "bag", "boot")),
       tint((255, 140, 60)), "orange colour cast"),
    _T("fashion_small", "shifted", "fashion", "dev", 10, target_side("fashion", _GARMENTS),
       zoom_out(0.6), "zoomed out to 60 %"),
    _T("fashion_colour", "shifted", "fashion", "report", 10, target_side("fashion", _GARMENTS),
       colour_ink(1), "coloured ink on coloured paper"),
    _T("scripts_inverted", "shifted", "glyphs", "report", 10,
       target_side("scripts", ("latin", "greek", "cyrillic", "lao")), invert,
       "inverted polarity"),
    _T("scripts_colour", "shifted", "glyphs", "dev", 10,
       target_side("scripts", ("latin", "greek", "cyrillic")), colour_ink(2),
       "coloured ink on coloured paper"),
    _T("scripts_small", "shifted", "glyphs", "report", 10,
       target_side("scripts", ("latin", "greek", "cyrillic")), zoom_out(0.6),
       "zoomed out to 60 %"),
    _T("letters_rotated", "shifted", "glyphs", "report", 10, target_side("letters", LETTERS[10:16]),
       rotate(1), "rotated 90 degrees"),
    _T("letters_inverted", "shifted", "glyphs", "report", 10,
       target_side("letters", LETTERS[10:16]), invert, "inverted polarity"),
    _T("fashion_upside_down", "shifted", "fashion", "report", 10,
       target_side("fashion", _GARMENTS_ALIKE), rotate(2), "rotated 180 degrees"),
    _T("papirus_rotated", "shifted", "papirus", "dev", 10,
       target_side("papirus", ("apps", "places")), rotate(2), "rotated 180 degrees"),
    _T("papirus_tinted", "shifted", "papirus", "report", 10,
       target_side("papirus", ("apps", "places")), tint((120, 255, 140)), "green colour cast"),
    _T("papirus_small", "shifted", "papirus", "report", 10,
       target_side("papirus", ("apps", "places")), zoom_out(0.5), "zoomed out to half size"),
    _T("breeze_inverted", "shifted", "breeze", "report", 10,
       target_side("breeze", ("actions", "apps")), invert, "inverted colours"),
    _T("breeze_small", "shifted", "breeze", "dev", 5, target_side("breeze", ("actions", "apps")),
       zoom_out(0.5), "zoomed out to half size", test_per_class=15),
    _T("endless_sky", "unseen_family", "endless_sky", "report", 30,
       unseen(lambda: _ENDLESS_SKY().only(("ships", "outfits", "lands", "planets")))),
    _T("endless_sky_fewshot", "unseen_family", "endless_sky", "report", 10,
       unseen(lambda: _ENDLESS_SKY().only(("ships", "effects", "projectiles", "outfits")))),
    _T("endless_sky_tiny", "unseen_family", "endless_sky", "dev", 5,
       unseen(lambda: _ENDLESS_SKY().only(("lands", "planets", "effects", "projectiles")))),
    _T("freedroid", "unseen_family", "freedroid", "report", 20,
       unseen(lambda: _FREEDROID().only(("droids", "weapons", "armour", "potions")))),
    _T("freedroid_fewshot", "unseen_family", "freedroid", "dev", 10,
       unseen(lambda: _FREEDROID().only(("weapons", "armour", "potions", "tux_parts")))),
    _T("freedroid_tiny", "unseen_family", "freedroid", "dev", 5,
       unseen(lambda: _FREEDROID().only(("droids", "weapons", "tux_parts"))), test_per_class=20),
    _T("minetest_fewshot", "unseen_family", "minetest", "report", 10, unseen(_MINETEST)),
    _T("minetest_tiny", "unseen_family", "minetest", "dev", 5,
       unseen(lambda: _MINETEST().only(("blocks", "test_nodes", "plants_and_wool"))),
       test_per_class=20),
    _T("marble_fewshot", "unseen_family", "marble", "report", 10, unseen(_MARBLE)),
    _T("marble", "unseen_family", "marble", "dev", 20, unseen(_MARBLE)),
    _T("warmux_fewshot", "unseen_family", "warmux", "report", 10, unseen(_WARMUX),
       test_per_class=20),
    _T("neverball_fewshot", "unseen_family", "neverball", "report", 10, unseen(_NEVERBALL),
       test_per_class=20),
    _T("mate", "unseen_family", "mate", "report", 20,
       unseen(lambda: _MATE().only(("actions", "mimetypes", "status")))),
    _T("mate_fewshot", "unseen_family", "mate", "dev", 10,
       unseen(lambda: _MATE().only(("actions", "status", "apps"))), test_per_class=20),
    _T("yaru_fewshot", "unseen_family", "yaru", "report", 10, unseen(_YARU)),
    _T("xfce", "unseen_family", "elementary_xfce", "report", 15,
       unseen(lambda: _XFCE().only(("actions", "apps", "devices", "categories")))),
    _T("xfce_fewshot", "unseen_family", "elementary_xfce", "dev", 5,
       unseen(lambda: _XFCE().only(("actions", "apps", "devices"))), test_per_class=15),
)  # fmt: skip
