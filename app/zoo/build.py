"""Build the bundled reference network, demo source zoo and held-out targets from real data.

``python -m app.zoo build`` (needs `apt-get install dataset-fashion-mnist openclipart-png
fonts-noto-core` and scikit-learn). Every domain is split by group (drawing, font, image)
into a training part and a held-out part; held-out images never train anything. Output goes
to ``app/zoo/bundled/`` (a few MB, committed), deterministic given ``--seed`` on one machine.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from app.architectures import build_model, get_spec, weights_to_save
from app.finetune.train import ImageTensors, TrainConfig, evaluate, train_classifier
from app.p2l.reference import load_reference
from app.p2l.signature import signature_of_array
from app.zoo import domains
from app.zoo.domains import Domain

BUNDLED_DIR = Path(__file__).parent / "bundled"
REFERENCE_ARCH = "compact_cnn"
SOURCE_ARCH = "compact_cnn_small"
HELDOUT_FRACTION = 0.3
TARGET_PER_CLASS = 50

CLIPART_SOURCES: dict[str, dict[str, list[str]]] = {
    "food": {
        "beverages": ["food/beverages"],
        "breads": ["food/breads_and_carbs"],
        "desserts": ["food/desserts"],
        "fruit_veg": ["food/fruit", "food/vegetables"],
        "meat_dairy": ["food/meats_and_eggs", "food/dairy"],
    },
    "animals": {
        "birds": ["animals/birds"],
        "bugs": ["animals/bugs"],
        "fish": ["animals/fish"],
        "mammals": ["animals/mammals"],
        "other_animals": ["animals/.", "animals/dinosaurs", "animals/fantasy"],
    },
    "people": {
        "bodyparts": ["people/bodypart"],
        "clothing": ["people/clothing"],
        "smilies": ["people/smilies"],
        "stickmen": ["people/stickmen"],
        "portraits": ["people/."],
    },
    "transport": {
        "boats": ["transportation/boating"],
        "roadsigns": ["transportation/roadsigns"],
        "vehicles": ["transportation/vehicles", "transportation/."],
    },
    "shapes": {
        "arrows": ["shapes/arrows"],
        "callouts": ["shapes/callouts"],
        "flowchart": ["shapes/flowchart"],
        "jigsaw": ["shapes/jigsaw"],
        "stars": ["shapes/stars"],
    },
    "signs": {
        "clocks": ["signs_and_symbols/clocks"],
        "flags": ["signs_and_symbols/flags"],
        "led": ["signs_and_symbols/led"],
        "map_symbols": ["signs_and_symbols/map_symbols"],
        "weather": ["signs_and_symbols/weather"],
    },
    "recreation": {
        "games": ["recreation/games"],
        "music": ["recreation/music"],
        "sports": ["recreation/sports"],
        "holidays": ["recreation/holiday", "recreation/party"],
        "toys": ["recreation/toys"],
    },
    "icons": {
        "icons": ["computer/icons"],
        "buttons": ["computer/buttons"],
        "hardware": ["computer/hardware"],
        "folders_misc": ["computer/folders", "computer/connectors", "computer/."],
    },
}
# Domains that no network ever trains on: targets where no source is related.
UNRELATED_CLIPART: dict[str, list[str]] = {
    "office": ["office"],
    "tools": ["tools"],
    "geography": ["geography"],
    "education": ["education"],
    "plants": ["plants"],
}
SOURCE_SCRIPTS = (
    "latin", "greek", "cyrillic", "arabic", "hebrew",
    "devanagari", "thai", "georgian", "armenian", "ethiopic",
)  # fmt: skip
UNSEEN_SCRIPTS = ("bengali", "tamil", "gujarati", "kannada", "khmer")
CLIPART_CAP = 150  # images per clip-art class, so stars/flags/icons do not swamp a domain
GARMENTS_PER_CLASS = 1000
GLYPHS_PER_CLASS = 400


@dataclass
class BuiltSource:
    """One trained source and where its files are."""

    name: str
    train: Domain
    heldout: Domain
    accuracy: float
    seconds: float


def load_domains(seed: int) -> tuple[dict[str, tuple[Domain, Domain]], dict[str, Domain]]:
    """(source domains as (train, held-out), target-only domains), all from offline data."""
    sources: dict[str, tuple[Domain, Domain]] = {}
    garments_train = domains.fashion_mnist("train")
    keep = np.concatenate(
        [np.flatnonzero(garments_train.labels == c)[:GARMENTS_PER_CLASS] for c in range(10)]
    )
    sources["garments"] = (garments_train.subset(np.isin(np.arange(60_000), keep)),
                           domains.fashion_mnist("t10k"))  # fmt: skip
    sources["digits"] = domains.split_by_group(domains.handwritten_digits(), HELDOUT_FRACTION, seed)
    sources["scripts"] = domains.split_by_group(
        domains.glyphs("scripts", SOURCE_SCRIPTS, GLYPHS_PER_CLASS, seed), HELDOUT_FRACTION, seed
    )
    for name, classes in CLIPART_SOURCES.items():
        domain = domains.clipart(name, classes, max_per_class=CLIPART_CAP, seed=seed)
        sources[name] = domains.split_by_group(domain, HELDOUT_FRACTION, seed)
    unrelated = {
        "objects": domains.clipart("objects", UNRELATED_CLIPART, max_per_class=60, seed=seed),
        "unseen_scripts": domains.glyphs("unseen_scripts", UNSEEN_SCRIPTS, 60, seed),
    }
    return sources, unrelated


def reference_training_set(
    sources: dict[str, tuple[Domain, Domain]], per_domain: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Training images of every source domain (capped per domain), labelled domain:class."""
    rng = np.random.default_rng(seed)
    images, labels, names = [], [], []
    for domain_name, (train, _) in sources.items():
        index = rng.permutation(len(train.labels))[:per_domain]
        images.append(train.images[index])
        labels.append(train.labels[index] + len(names))
        names.extend(f"{domain_name}:{c}" for c in train.class_names)
    return np.concatenate(images), np.concatenate(labels), names


def pick_target(domain: Domain, seed: int, per_class: int = TARGET_PER_CLASS) -> Domain:
    """Up to 5 classes x ``per_class`` images: the benchmark-style target of a domain."""
    rng = np.random.default_rng(seed)
    counts = domain.counts()
    classes = sorted(counts, key=lambda c: (-counts[c], c))[:5]
    keep = []
    for name in classes:
        index = np.flatnonzero(domain.labels == domain.class_names.index(name))
        keep.extend(rng.permutation(index)[:per_class])
    subset = domain.subset(np.isin(np.arange(len(domain.labels)), keep))
    remap = {domain.class_names.index(c): i for i, c in enumerate(sorted(classes))}
    return Domain(
        domain.name,
        sorted(classes),
        subset.images,
        np.array([remap[int(label)] for label in subset.labels]),
        subset.groups,
    )


def train_model(
    arch: str, train: Domain | tuple, epochs: int, seed: int, lr: float = 0.05
) -> tuple[torch.nn.Module, float]:
    """Train a fresh ``arch`` classifier; returns the model and seconds taken."""
    images, labels, names = (
        (train.images, train.labels, train.class_names) if isinstance(train, Domain) else train
    )
    spec = get_spec(arch)
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=len(names))
    start = time.perf_counter()
    train_classifier(
        model,
        ImageTensors(images, labels, spec.mean, spec.std),
        TrainConfig(epochs=epochs, lr=lr, seed=seed),
    )
    return model.eval(), time.perf_counter() - start


def heldout_accuracy(model: torch.nn.Module, arch: str, heldout: Domain) -> float:
    """Accuracy on the held-out part of the model's own domain."""
    spec = get_spec(arch)
    return evaluate(
        model, ImageTensors(heldout.images, heldout.labels, spec.mean, spec.std)
    ).accuracy


def build(out: Path, seed: int, reference_epochs: int, reference_per_domain: int) -> dict:
    """Run the whole build and write weights, signatures, targets and a manifest to ``out``."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    sources, unrelated = load_domains(seed)
    loaded = time.perf_counter() - started
    print(f"loaded {len(sources)} source domains in {loaded:.0f}s", flush=True)
    for name, (train, heldout) in sources.items():
        print(f"  {name:12s} train {len(train.labels):6d}  held-out {len(heldout.labels):6d}")
        if empty := [c for c, n in train.counts().items() if n == 0]:
            raise RuntimeError(f"{name}: no training images left for {empty}")

    out.mkdir(parents=True, exist_ok=True)
    (out / "sources").mkdir(exist_ok=True)
    (out / "targets").mkdir(exist_ok=True)

    ref_images, ref_labels, ref_names = reference_training_set(sources, reference_per_domain, seed)
    reference_model, ref_seconds = train_model(
        REFERENCE_ARCH, (ref_images, ref_labels, ref_names), reference_epochs, seed
    )
    reference_file = out / "reference.safetensors"
    save_file(weights_to_save(reference_model), reference_file)
    reference = load_reference(REFERENCE_ARCH, reference_file, device="cpu")
    print(f"reference: {len(ref_labels)} images, {len(ref_names)} classes, "
          f"{ref_seconds:.0f}s", flush=True)  # fmt: skip

    manifest_sources = []
    for name, (train, heldout) in sources.items():
        epochs = int(np.clip(40_000 / len(train.labels), 8, 60))
        model, seconds = train_model(SOURCE_ARCH, train, epochs, seed)
        accuracy = heldout_accuracy(model, SOURCE_ARCH, heldout)
        save_file(weights_to_save(model, half=True), out / "sources" / f"{name}.safetensors")
        signature = signature_of_array(reference, train.images, train.labels, train.class_names)
        (out / "sources" / f"{name}.signature.safetensors").write_bytes(signature.to_bytes())
        manifest_sources.append(
            {
                "name": name,
                "architecture": SOURCE_ARCH,
                "num_classes": len(train.class_names),
                "class_names": train.class_names,
                "num_train_images": len(train.labels),
                "num_heldout_images": len(heldout.labels),
                "epochs": epochs,
                "heldout_accuracy": round(accuracy, 4),
                "train_seconds": round(seconds, 1),
                "weights": f"sources/{name}.safetensors",
                "signature": f"sources/{name}.signature.safetensors",
            }
        )
        print(f"source {name:12s} n={len(train.labels):6d} epochs={epochs:3d} "
              f"held-out acc={accuracy:.3f} ({seconds:.0f}s)", flush=True)  # fmt: skip

    targets = []
    for name, (_, heldout) in sources.items():
        targets.append(_write_target(out, name, pick_target(heldout, seed), related=name))
    for name, domain in unrelated.items():
        targets.append(_write_target(out, name, pick_target(domain, seed), related=None))

    manifest = {
        "seed": seed,
        "reference": {
            "architecture": REFERENCE_ARCH,
            "weights": "reference.safetensors",
            "weights_sha256": reference.weights_sha256,
            "feature_dim": reference.feature_dim,
            "train_images": len(ref_labels),
            "train_classes": ref_names,
            "epochs": reference_epochs,
            "train_seconds": round(ref_seconds, 1),
        },
        "sources": manifest_sources,
        "targets": targets,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"built in {manifest['build_seconds']:.0f}s -> {out}")
    return manifest


def _write_target(out: Path, name: str, target: Domain, related: str | None) -> dict:
    path = out / "targets" / f"{name}.npz"
    np.savez_compressed(
        path, images=target.images, labels=target.labels, class_names=np.array(target.class_names)
    )
    return {
        "name": name,
        "file": f"targets/{name}.npz",
        "related_source": related,
        "class_counts": target.counts(),
    }


def export_target(name: str, out: Path, hold_back: int) -> None:
    """Write a bundled held-out target as ``<out>/<name>.zip`` (class folders of PNGs), keeping
    ``hold_back`` images per class aside as ``<out>/heldout/<class>_<i>.png`` for predictions.
    """
    import io
    import zipfile

    from PIL import Image

    data = np.load(BUNDLED_DIR / "targets" / f"{name}.npz")
    names = [str(c) for c in data["class_names"]]
    (out / "heldout").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out / f"{name}.zip", "w") as archive:
        for label, class_name in enumerate(names):
            images = data["images"][data["labels"] == label]
            for i, pixels in enumerate(images):
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, "PNG")
                if i >= len(images) - hold_back:
                    (out / "heldout" / f"{class_name}_{i}.png").write_bytes(buffer.getvalue())
                else:
                    archive.writestr(f"{name}/{class_name}/{i:03d}.png", buffer.getvalue())
    print(f"wrote {out / f'{name}.zip'} and {hold_back} held-back images per class in "
          f"{out / 'heldout'}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (``python -m app.zoo build``)."""
    parser = argparse.ArgumentParser(prog="python -m app.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="train and write the bundled zoo")
    build_cmd.add_argument("--out", type=Path, default=BUNDLED_DIR)
    build_cmd.add_argument("--seed", type=int, default=0)
    build_cmd.add_argument("--reference-epochs", type=int, default=12)
    build_cmd.add_argument("--reference-per-domain", type=int, default=1500)
    export = sub.add_parser("export-target", help="write a bundled held-out target as a zip")
    export.add_argument("name", help="a target in app/zoo/bundled/targets, e.g. garments")
    export.add_argument("--out", type=Path, default=Path("demo"))
    export.add_argument("--hold-back", type=int, default=10, help="images per class kept aside")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.out, args.seed, args.reference_epochs, args.reference_per_domain)
    else:
        export_target(args.name, args.out, args.hold_back)
