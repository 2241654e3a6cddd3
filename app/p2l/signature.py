"""Dataset signatures: the few statistics of a dataset in reference-feature space that P2L needs."""

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load, save

from app.p2l.reference import ReferenceNetwork

# Most images one signature may summarise: ~70x ImageNet-21k, inside the 32-bit num_images
# column (2**31 - 1), and it bounds the size term lambda * log(n) (0.041 at the default
# lambda). It cannot make an uploaded count true: within it, a claim still tilts rankings.
MAX_SIGNATURE_IMAGES = 10**9
# Pooled reference features are O(1..100); far above that, yet squares and sums of
# thousands of them stay finite in the float32 index, where they are ranked and drawn.
MAX_FEATURE_VALUE = 1e9


@dataclass(frozen=True)
class DatasetSignature:
    """``n`` images, per-class counts, mean feature, per-class means, per-dimension variance."""

    class_names: list[str]
    class_counts: np.ndarray  # (C,) int64
    mean: np.ndarray  # (d,) float32
    class_means: np.ndarray  # (C, d) float32
    variance: np.ndarray  # (d,) float32
    reference_sha256: str

    @property
    def n(self) -> int:
        """Number of images the signature summarises."""
        return int(self.class_counts.sum())

    @property
    def feature_dim(self) -> int:
        """Dimension of the reference feature space."""
        return int(self.mean.shape[0])

    def to_bytes(self) -> bytes:
        """Serialise as safetensors (class names and reference digest in the metadata)."""
        tensors: dict[str, np.ndarray] = {
            "class_counts": self.class_counts.astype(np.int64),
            "mean": self.mean.astype(np.float32),
            "class_means": self.class_means.astype(np.float32),
            "variance": self.variance.astype(np.float32),
        }
        metadata = {
            "class_names": json.dumps(self.class_names),
            "reference_sha256": self.reference_sha256,
        }
        return save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes) -> "DatasetSignature":
        """Inverse of ``to_bytes``; ValueError if the data is not a signature."""
        try:
            tensors = load(data)
            metadata = _safetensors_metadata(data)
            signature = cls(
                class_names=json.loads(metadata["class_names"]),
                class_counts=tensors["class_counts"],
                mean=tensors["mean"],
                class_means=tensors["class_means"],
                variance=tensors["variance"],
                reference_sha256=metadata.get("reference_sha256", ""),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a dataset signature: {exc}") from None
        signature.validate()
        return signature

    def validate(self) -> None:
        """Check shapes agree, every number is finite and bounded; ValueError says what is off."""
        names = self.class_names
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("class_names must be a list of strings")
        if not names or len(set(names)) != len(names):
            raise ValueError("class_names must name at least one class, each once")
        if self.mean.ndim != 1 or self.mean.shape[0] < 1:
            raise ValueError("mean must be a non-empty vector")
        n_classes, dim = len(names), self.mean.shape[0]
        if self.variance.shape != (dim,):
            raise ValueError("mean and variance must be vectors of the same length")
        if self.class_means.shape != (n_classes, dim):
            raise ValueError(
                f"class_means has shape {self.class_means.shape}, expected ({n_classes}, {dim})"
            )
        for field, values, bound in (
            ("mean", self.mean, MAX_FEATURE_VALUE),
            ("class_means", self.class_means, MAX_FEATURE_VALUE),
            ("variance", self.variance, MAX_FEATURE_VALUE**2),
        ):
            _check_floats(field, values, bound)
        if (self.variance < 0).any():
            raise ValueError("variance must not be negative")
        counts = self.class_counts
        if counts.dtype.kind not in "iu" or counts.shape != (n_classes,) or (counts < 1).any():
            raise ValueError("class_counts must hold one positive integer count per class")
        # Each count is bounded before summing, so the int64 sum cannot wrap around.
        if counts.max() > MAX_SIGNATURE_IMAGES or counts.astype(np.int64).sum() > (
            MAX_SIGNATURE_IMAGES
        ):
            raise ValueError(
                f"class_counts add up to more than {MAX_SIGNATURE_IMAGES:,} images, the most a "
                "signature may summarise"
            )

    def to_json(self) -> dict[str, object]:
        """Plain-JSON view with every vector (for ``GET /v1/datasets/{id}/signature``)."""
        return {
            "n": self.n,
            "feature_dim": self.feature_dim,
            "reference_sha256": self.reference_sha256,
            "classes": [
                {"name": name, "count": int(count), "mean": mean.tolist()}
                for name, count, mean in zip(
                    self.class_names, self.class_counts, self.class_means, strict=True
                )
            ],
            "mean": self.mean.tolist(),
            "variance": self.variance.tolist(),
        }


class SignatureAccumulator:
    """Running sums from which a signature is finished: O(C x d) memory, any number of images."""

    def __init__(self, class_names: list[str], feature_dim: int, reference_sha256: str) -> None:
        self.class_names = class_names
        self.reference_sha256 = reference_sha256
        self.class_sums = torch.zeros(len(class_names), feature_dim, dtype=torch.float64)
        self.square_sum = torch.zeros(feature_dim, dtype=torch.float64)
        self.counts = torch.zeros(len(class_names), dtype=torch.float64)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Fold in one batch of features with their class indices."""
        batch = features.double()
        self.class_sums.index_add_(0, labels, batch)
        self.square_sum += (batch * batch).sum(0)
        self.counts += torch.bincount(labels, minlength=len(self.class_names)).double()

    def finish(self) -> DatasetSignature:
        """The signature of everything added so far."""
        total = self.counts.sum()
        if total == 0:
            raise ValueError("cannot compute the signature of an empty dataset")
        mean = self.class_sums.sum(0) / total
        variance = (self.square_sum / total - mean * mean).clamp_min(0)
        return DatasetSignature(
            class_names=self.class_names,
            class_counts=self.counts.long().numpy(),
            mean=mean.float().numpy(),
            class_means=(self.class_sums / self.counts.clamp_min(1)[:, None]).float().numpy(),
            variance=variance.float().numpy(),
            reference_sha256=self.reference_sha256,
        )


def compute_signature(
    reference: ReferenceNetwork,
    files_by_class: Mapping[str, Sequence[Path]],
    batch_size: int = 128,
    threads: int = 0,
    on_pixels: Callable[[np.ndarray], None] | None = None,
) -> DatasetSignature:
    """Embed every image file once and accumulate the signature batch by batch.

    Memory stays at one batch of images plus O(C x d) running sums, whatever the dataset size.
    ``on_pixels`` sees each decoded batch, in file order (classes sorted by name).
    """
    class_names = sorted(files_by_class)
    paths = [path for name in class_names for path in files_by_class[name]]
    labels = torch.tensor(
        [i for i, name in enumerate(class_names) for _ in files_by_class[name]], dtype=torch.long
    )
    accumulator = SignatureAccumulator(class_names, reference.feature_dim, reference.weights_sha256)
    done = 0
    for features in reference.embed(paths, batch_size, threads, on_pixels):
        accumulator.add(features, labels[done : done + len(features)])
        done += len(features)
    return accumulator.finish()


def signature_of_array(
    reference: ReferenceNetwork, images: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> DatasetSignature:
    """Signature of in-memory uint8 images (already at the reference's input size)."""
    accumulator = SignatureAccumulator(class_names, reference.feature_dim, reference.weights_sha256)
    label_tensor = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    done = 0
    for features in reference.embed_array(images):
        accumulator.add(features, label_tensor[done : done + len(features)])
        done += len(features)
    return accumulator.finish()


def load_signature(path: Path) -> DatasetSignature:
    """Read a signature file written by ``DatasetSignature.to_bytes``."""
    return DatasetSignature.from_bytes(path.read_bytes())


def _check_floats(field: str, values: np.ndarray, bound: float) -> None:
    if values.dtype.kind != "f":
        raise ValueError(f"{field} must hold floating-point numbers, not {values.dtype}")
    if not np.isfinite(values).all():
        raise ValueError(f"{field} holds NaN or infinite values")
    if values.size and np.abs(values).max() > bound:
        raise ValueError(f"{field} holds values beyond +-{bound:g}")


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    # safetensors has already parsed this header: its metadata maps str to str.
    metadata: dict[str, str] = header.get("__metadata__", {})
    return metadata
