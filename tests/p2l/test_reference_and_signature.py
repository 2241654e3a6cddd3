"""The reference network and dataset signatures, used as a library (no HTTP)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from app.families import build_model
from app.p2l.reference import load_reference
from app.p2l.signature import DatasetSignature, compute_signature
from tests.archives import fashion_mnist_images

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def garment_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Real Fashion-MNIST images on disk, 12 per class."""
    root = tmp_path_factory.mktemp("garments")
    files: dict[str, list[Path]] = {}
    for name, images in fashion_mnist_images(per_class=12).items():
        (root / name).mkdir()
        for i, data in enumerate(images):
            path = root / name / f"{i}.png"
            path.write_bytes(data)
            files.setdefault(name, []).append(path)
    return files


def test_default_reference_is_deterministic_and_described() -> None:
    first, second = load_reference("compact_cnn", None), load_reference("compact_cnn", None)
    assert first.weights_sha256 == second.weights_sha256
    assert first.describe() == {
        "architecture": "compact_cnn",
        "input_size": 32,
        "feature_dim": 128,
        "weights_sha256": first.weights_sha256,
        "weights_source": "seeded-random-init:0",
        "device": "cpu",
    }


def test_torchvision_reference_loads_local_safetensors(tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.safetensors"
    save_file(build_model("resnet18", num_classes=10).state_dict(), weights)
    reference = load_reference("resnet18", weights)
    assert reference.feature_dim == 512 and reference.input_size == 224
    assert reference.weights_source == "file:resnet18.safetensors"  # the name, not the path
    assert len(reference.weights_sha256) == 64


def test_torchvision_reference_without_weights_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a weights file"):
        load_reference("resnet18", None)


def test_mismatched_reference_weights_name_the_first_bad_tensor(tmp_path: Path) -> None:
    weights = tmp_path / "wrong.safetensors"
    save_file(build_model("compact_cnn_small", num_classes=3).state_dict(), weights)
    with pytest.raises(ValueError, match=r"stem\.0\.weight.*shape \(16, 3, 3, 3\)"):
        load_reference("compact_cnn", weights)


def test_embed_keeps_order_and_batch_size_does_not_matter(
    garment_files: dict[str, list[Path]],
) -> None:
    reference = load_reference("compact_cnn", None)
    paths = [p for files in garment_files.values() for p in files]
    batches = list(reference.embed(paths, batch_size=7, threads=2))
    assert [len(b) for b in batches] == [7] * (len(paths) // 7) + [len(paths) % 7]
    small = torch.cat(batches)
    whole = torch.cat(list(reference.embed(paths, batch_size=1000)))
    assert torch.allclose(small, whole, atol=1e-5)
    reversed_features = torch.cat(list(reference.embed(paths[::-1], batch_size=5)))
    assert torch.allclose(reversed_features.flip(0), whole, atol=1e-5)
    assert (whole >= 0).all()


def test_signature_matches_statistics_of_the_features(
    garment_files: dict[str, list[Path]],
) -> None:
    reference = load_reference("compact_cnn", None)
    signature = compute_signature(reference, garment_files, batch_size=5)

    names = sorted(garment_files)
    features = {
        name: torch.cat(list(reference.embed(garment_files[name]))).double().numpy()
        for name in names
    }
    everything = np.concatenate([features[n] for n in names])
    assert signature.class_names == names and signature.n == len(everything)
    assert signature.class_counts.tolist() == [12] * 5
    assert np.allclose(signature.mean, everything.mean(0), atol=1e-5)
    assert np.allclose(signature.variance, everything.var(0), atol=1e-5)
    for i, name in enumerate(names):
        assert np.allclose(signature.class_means[i], features[name].mean(0), atol=1e-5)

    restored = DatasetSignature.from_bytes(signature.to_bytes())
    assert restored.class_names == names
    assert np.array_equal(restored.class_means, signature.class_means)
    assert restored.reference_sha256 == reference.weights_sha256


def test_signature_bytes_are_validated() -> None:
    with pytest.raises(ValueError, match="not a dataset signature"):
        DatasetSignature.from_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")


def test_embedding_handles_any_image_mode_and_size(tmp_path: Path) -> None:
    reference = load_reference("compact_cnn", None)
    paths = []
    for i, image in enumerate(
        [
            Image.new("L", (300, 20), 128),
            Image.new("RGBA", (17, 90), (255, 0, 0, 0)),
            Image.new("P", (64, 64)),
            Image.new("RGB", (1, 1), "blue"),
        ]
    ):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    jpeg = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1500), "green").save(jpeg)
    paths.append(jpeg)
    features = torch.cat(list(reference.embed(paths)))
    assert features.shape == (5, reference.feature_dim)
    assert torch.isfinite(features).all()
