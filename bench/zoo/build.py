"""Build the bundled zoo: reference candidates, source models, benchmark targets.

    python -m bench.zoo build                 # everything (about 25 minutes on 2 cores)
    python -m bench.zoo build --stages targets sources
    python -m bench.zoo use-reference ssl     # make a candidate the bundled reference

Needs the Debian packages in ``bench.zoo.families.PACKAGES`` and ``pip install -e '.[zoo]'``.
Writes ``app/zoo/bundled/`` (what the service ships: the reference network, sources with
their signatures, targets, manifest.json) and ``bench/zoo/candidates/`` (every candidate
reference with the sources' signatures under it, so the benchmark can compare them).
Deterministic given ``--seed`` on one machine and thread count.
"""

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from app.families import build_model, get_spec, weights_to_save
from app.finetune.train import ImageTensors, TrainConfig, evaluate, train_classifier
from app.p2l.reference import ReferenceNetwork, load_reference
from app.p2l.signature import load_signature, signature_of_array
from app.zoo.bundled import BUNDLED_DIR
from bench.zoo import families as fam
from bench.zoo import recipe
from bench.zoo import reference as candidates
from bench.zoo.families import Domain

CANDIDATES_DIR = Path(__file__).parent / "candidates"
SOURCE_ARCH = "compact_cnn"
SOURCE_HELDOUT = 0.1  # of each source's data, by group: its held-out accuracy
# The rule of bench.selection applied to all targets (bench/results/selection.md, "chosen on
# all targets"); its nested leave-one-family-out figures are the ones the README quotes.
CHOSEN_REFERENCE = "ssl"
REFERENCE_CANDIDATES = ("ssl", "pool_packages", "random")
STAGES = ("targets", "references", "sources", "signatures")


# --- targets -------------------------------------------------------------------------------


def image_key(pixels: np.ndarray) -> bytes:
    """Identity of one image, so that no two targets share it."""
    return hashlib.sha256(pixels.tobytes()).digest()


def pick_target(
    pool: Domain, spec: recipe.TargetSpec, used: set[bytes], seed: int
) -> tuple[Domain, np.ndarray]:
    """``train_per_class`` + ``test_per_class`` images of every class, test by whole groups.

    Images in ``used`` (every source's training data, earlier targets) and repeats of one
    image are skipped; the test split takes whole groups (one
    drawing, unit or font never straddles the split; what a test group holds beyond
    ``test_per_class`` is left out). Returns the target and its test mask.
    """
    rng = np.random.default_rng(seed)
    keys = [image_key(img) for img in pool.images]
    first = {key: i for i, key in reversed(list(enumerate(keys)))}  # duplicates count once
    fresh = np.array([key not in used and first[key] == i for i, key in enumerate(keys)])
    keep, test = [], []
    for label, name in enumerate(pool.class_names):
        index = np.flatnonzero((pool.labels == label) & fresh)
        # Smallest groups first (ties in random order): the test split gets many small
        # groups, and the big ones (a unit's 100 animation frames) are left for training.
        groups, sizes = np.unique(pool.groups[index], return_counts=True)
        test_index: list[int] = []
        for g in np.lexsort((rng.random(len(groups)), sizes)):
            if len(test_index) >= spec.test_per_class:
                break
            test_index.extend(rng.permutation(index[pool.groups[index] == groups[g]]))
        test_groups = set(pool.groups[test_index])
        rest = [i for i in rng.permutation(index) if pool.groups[i] not in test_groups]
        test_index = test_index[: spec.test_per_class]
        if len(test_index) < spec.test_per_class or len(rest) < spec.train_per_class:
            raise RuntimeError(
                f"{spec.name}: class {name} has {len(index)} unused images, fewer than "
                f"{spec.train_per_class} + {spec.test_per_class} (test by whole groups)"
            )
        keep.extend(rest[: spec.train_per_class])
        test.extend(test_index)
        keep.extend(test_index)
    order = np.array(keep)
    target = pool.subset(order)
    is_test = np.isin(order, test)
    used.update(image_key(img) for img in target.images)
    if spec.shift is not None:
        target = target.map_images(spec.shift, spec.name)
    return target, is_test


def _same_arrays(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Whether the file at ``path`` holds exactly these arrays."""
    if not path.exists():
        return False
    with np.load(path) as stored:
        return set(stored.files) == set(arrays) and all(
            np.array_equal(stored[key], value) for key, value in arrays.items()
        )


def build_targets(out: Path, seed: int) -> list[dict[str, Any]]:
    """Write every benchmark target as ``targets/<name>.npz`` with its fixed test split."""
    (out / "targets").mkdir(parents=True, exist_ok=True)
    # Families are split by group, but a few files are byte-for-byte copies of others.
    used = {image_key(img) for spec in recipe.SOURCES for img in spec.data().images}
    entries = []
    for spec in recipe.TARGETS:
        target, is_test = pick_target(spec.pool(), spec, used, seed)
        path = out / "targets" / f"{spec.name}.npz"
        arrays = {
            "images": target.images,
            "labels": target.labels,
            "class_names": np.array(target.class_names),
            "is_test": is_test,
        }
        # A rebuild leaves a target's file alone when its arrays are unchanged: adding a
        # target does not rewrite (or re-fingerprint) the ones before it.
        if not _same_arrays(path, arrays):
            np.savez_compressed(path, **arrays)
        entries.append(
            {
                "name": spec.name,
                "file": f"targets/{spec.name}.npz",
                "kind": spec.kind,
                "family": spec.family,
                "role": spec.role,
                "shift": spec.shift_name,
                "description": spec.description,
                "class_names": target.class_names,
                "train_per_class": spec.train_per_class,
                "test_per_class": spec.test_per_class,
                "related_sources": [s.name for s in recipe.SOURCES if spec.family in s.families],
                "bytes": path.stat().st_size,
            }
        )
        print(f"target {spec.name:24s} {spec.kind:13s} {len(target.class_names)} classes x "
              f"{spec.train_per_class}+{spec.test_per_class}  {path.stat().st_size / 1e3:.0f} kB",
              flush=True)  # fmt: skip
    return entries


# --- reference candidates --------------------------------------------------------------------


def build_references(
    seed: int, ssl_epochs: int, supervised_epochs: int, which: tuple[str, ...]
) -> dict[str, Any]:
    """Train the candidates in ``which`` on the disjoint pool into ``candidates/``; their
    descriptions for the manifest."""
    CANDIDATES_DIR.mkdir(parents=True, exist_ok=True)
    pool = fam.reference_pool(3000, seed)
    print(f"reference pool: {len(pool)} images from {len(pool.class_names)} packages", flush=True)
    info: dict[str, Any] = {
        "pool": {
            "images": len(pool),
            "packages": {f: fam.PACKAGES[f] for f in fam.POOL_SOURCES},
        }
    }
    if "ssl" in which:
        model, log = candidates.train_ssl(pool.images, ssl_epochs, seed)
        info["ssl"] = {"method": "SimCLR, no labels", **log}
        save_file(weights_to_save(model), CANDIDATES_DIR / "ssl.safetensors")
    if "pool_packages" in which:
        model, log = candidates.train_pool_packages(
            pool.images, pool.labels, len(pool.class_names), supervised_epochs, seed
        )
        info["pool_packages"] = {
            "method": f"supervised: which of the {len(pool.class_names)} pool packages",
            **log,
        }
        save_file(weights_to_save(model), CANDIDATES_DIR / "pool_packages.safetensors")
    if "random" in which:
        save_file(
            weights_to_save(candidates.random_init(seed)), CANDIDATES_DIR / "random.safetensors"
        )
        info["random"] = {"method": f"seeded initialisation ({seed}), untrained"}
    return info


def load_candidate(name: str) -> ReferenceNetwork:
    """A candidate reference network, on the CPU."""
    return load_reference(candidates.ARCHITECTURE, CANDIDATES_DIR / f"{name}.safetensors", "cpu")


# --- sources -----------------------------------------------------------------------------------


def source_epochs(n: int) -> int:
    """About 150,000 image passes per source, between 6 and 100 epochs."""
    return int(np.clip(round(150_000 / n), 6, 100))


def source_split(spec: recipe.SourceSpec, seed: int) -> tuple[Domain, Domain]:
    """(training data, held-out 10 % by group) of a source."""
    return fam.split_by_group(spec.data(), SOURCE_HELDOUT, seed)


def sign_sources(seed: int) -> None:
    """Sign every source's training data under every candidate reference network."""
    references = {name: load_candidate(name) for name in REFERENCE_CANDIDATES}
    for spec in recipe.SOURCES:
        train, _ = source_split(spec, seed)
        for ref_name, reference in references.items():
            signature = signature_of_array(reference, train.images, train.labels, train.class_names)
            folder = CANDIDATES_DIR / ref_name
            folder.mkdir(exist_ok=True)
            (folder / f"{spec.name}.signature.safetensors").write_bytes(signature.to_bytes())


def build_sources(out: Path, seed: int) -> list[dict[str, Any]]:
    """Train every source, keeping 10 % of its data (by group) for its held-out accuracy."""
    (out / "sources").mkdir(parents=True, exist_ok=True)
    spec_arch = get_spec(SOURCE_ARCH)
    entries = []
    for spec in recipe.SOURCES:
        train, heldout = source_split(spec, seed)
        epochs = source_epochs(len(train))
        torch.manual_seed(seed)
        model = build_model(SOURCE_ARCH, len(train.class_names))
        started = time.perf_counter()
        train_classifier(
            model,
            ImageTensors(train.images, train.labels, spec_arch.mean, spec_arch.std),
            TrainConfig(epochs=epochs, batch_size=128, lr=0.05, seed=seed),
        )
        seconds = time.perf_counter() - started
        accuracy = evaluate(
            model, ImageTensors(heldout.images, heldout.labels, spec_arch.mean, spec_arch.std)
        ).accuracy
        save_file(weights_to_save(model, half=True), out / "sources" / f"{spec.name}.safetensors")
        entries.append(
            {
                "name": spec.name,
                "families": list(spec.families),
                "description": spec.description,
                "architecture": SOURCE_ARCH,
                "num_classes": len(train.class_names),
                "class_names": train.class_names,
                "num_train_images": len(train),
                "num_heldout_images": len(heldout),
                "epochs": epochs,
                "heldout_accuracy": round(accuracy, 4),
                "train_seconds": round(seconds, 1),
                "weights": f"sources/{spec.name}.safetensors",
                "signature": f"sources/{spec.name}.signature.safetensors",
            }
        )
        print(
            f"source {spec.name:22s} n={len(train):6d} classes={len(train.class_names):3d} "
            f"epochs={epochs:3d} held-out acc={accuracy:.3f} ({seconds:.0f}s)",
            flush=True,
        )
    return entries


# --- the bundle ------------------------------------------------------------------------------


def remove_stale(out: Path, manifest: dict[str, Any]) -> None:
    """Delete bundled files that the manifest no longer names (renamed or dropped)."""
    named = {e[k] for e in manifest["sources"] for k in ("weights", "signature")}
    named |= {e["file"] for e in manifest["targets"]}
    for folder in ("sources", "targets"):
        for path in (out / folder).glob("*"):
            if f"{folder}/{path.name}" not in named:
                path.unlink()


def use_reference(out: Path, name: str) -> None:
    """Make candidate ``name`` the bundled reference: its weights and the sources' signatures."""
    manifest = json.loads((out / "manifest.json").read_text())
    reference = load_candidate(name)
    signatures = {
        entry["signature"]: CANDIDATES_DIR / name / f"{entry['name']}.signature.safetensors"
        for entry in manifest["sources"]
    }
    for path in signatures.values():
        if load_signature(path).reference_sha256 != reference.weights_sha256:
            raise RuntimeError(f"{path} was signed by another network: run the signatures stage")
    shutil.copyfile(CANDIDATES_DIR / f"{name}.safetensors", out / "reference.safetensors")
    for bundled, candidate in signatures.items():
        shutil.copyfile(candidate, out / bundled)
    manifest["reference"].update(
        {
            "candidate": name,
            "architecture": candidates.ARCHITECTURE,
            "weights": "reference.safetensors",
            "weights_sha256": reference.weights_sha256,
            "feature_dim": reference.feature_dim,
        }
    )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"bundled reference: {name} ({reference.weights_sha256[:12]})")


def build(
    out: Path,
    seed: int,
    stages: list[str],
    ssl_epochs: int,
    reference: str,
    which: tuple[str, ...] = REFERENCE_CANDIDATES,
) -> None:
    """Run the stages asked for and (re)write the manifest."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    if manifest.get("format") != 2:
        manifest = {"format": 2, "reference": {}, "sources": [], "targets": []}
    manifest["seed"] = seed
    manifest["image_size"] = fam.SIZE
    out.mkdir(parents=True, exist_ok=True)
    timings = manifest.setdefault("build_seconds", {})
    for stage in STAGES:
        if stage not in stages:
            continue
        stage_started = time.perf_counter()
        if stage == "targets":
            manifest["targets"] = build_targets(out, seed)
        elif stage == "references":
            trained = build_references(seed, ssl_epochs, 30, which)
            known = manifest["reference"].get("candidates", {})
            manifest["reference"] = {
                "candidates": {k: v for k, v in {**known, **trained}.items()
                               if k in (*REFERENCE_CANDIDATES, "pool")}
            }  # fmt: skip
        elif stage == "sources":
            manifest["sources"] = build_sources(out, seed)
        else:
            sign_sources(seed)
        timings[stage] = round(time.perf_counter() - stage_started, 1)
    manifest["packages"] = sorted(set(fam.PACKAGES.values()))
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    remove_stale(out, manifest)
    if manifest["sources"] and (CANDIDATES_DIR / reference).is_dir():
        use_reference(out, reference)
    print(f"built {stages} in {time.perf_counter() - started:.0f}s -> {out}")


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (``python -m bench.zoo``)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.zoo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="train and write the bundled zoo")
    build_cmd.add_argument("--out", type=Path, default=BUNDLED_DIR)
    build_cmd.add_argument("--seed", type=int, default=0)
    build_cmd.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    build_cmd.add_argument("--ssl-epochs", type=int, default=150)
    build_cmd.add_argument("--reference", choices=REFERENCE_CANDIDATES, default=CHOSEN_REFERENCE)
    build_cmd.add_argument(
        "--candidates",
        nargs="+",
        choices=REFERENCE_CANDIDATES,
        default=list(REFERENCE_CANDIDATES),
        help="reference candidates the references stage trains",
    )
    use = sub.add_parser("use-reference", help="make a candidate the bundled reference")
    use.add_argument("name", choices=REFERENCE_CANDIDATES)
    use.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(
            args.out,
            args.seed,
            args.stages,
            args.ssl_epochs,
            args.reference,
            tuple(args.candidates),
        )
    else:
        use_reference(args.out, args.name)
