"""The reference network: one fixed feature extractor that embeds every dataset the same way.

``ReferenceNetwork.embed`` is the single entry point: image files in, pooled features out,
one batch at a time, with image decoding done by a thread pool ahead of the model.
"""

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from app.architectures import (
    build_model,
    feature_dim,
    feature_extractor,
    get_spec,
    head_attribute,
    weights_to_save,
)
from app.datasets.loading import decode_threads, pixel_batches


def share_cpus_with_decoding(loader_threads: int = 0) -> None:
    """Give torch the CPUs that image decoding does not use (set once per process).

    Decoding threads and torch's own threads otherwise compete for the same cores; on 2
    cores, one decoding thread and one torch thread embedded PNGs about 1.3x faster than two
    of each in a sweep we ran.
    """
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - decode_threads(loader_threads)))


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' means CUDA when present, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class ReferenceNetwork:
    """A loaded feature extractor plus everything needed to feed it and describe it."""

    architecture: str
    extractor: torch.nn.Module
    input_size: int
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_sha256: str
    weights_source: str
    device: torch.device

    def embed(
        self,
        paths: Sequence[Path],
        batch_size: int = 128,
        threads: int = 0,
        on_pixels: Callable[[np.ndarray], None] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield float32 CPU features ``(batch, feature_dim)`` for image files, in order.

        ``on_pixels`` sees each decoded ``(B, size, size, 3)`` uint8 batch (to cache it).
        """
        batches = pixel_batches(paths, self.input_size, batch_size, threads)
        if on_pixels is not None:
            batches = _tee(batches, on_pixels)
        yield from self.embed_pixels(batches)

    def embed_array(self, images: np.ndarray, batch_size: int = 256) -> Iterator[torch.Tensor]:
        """Features of in-memory ``(N, size, size, 3)`` uint8 images, batch by batch."""
        yield from self.embed_pixels(
            images[first : first + batch_size] for first in range(0, len(images), batch_size)
        )

    def embed_pixels(self, batches: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        """Features of batches of ``(B, size, size, 3)`` uint8 pixels (already resized)."""
        use_cuda = self.device.type == "cuda"
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255
        for pixels in batches:
            batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(
                self.device, non_blocking=use_cuda
            )
            batch = batch.permute(0, 3, 1, 2).float().sub_(mean).div_(std)
            if use_cuda:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with (
                torch.inference_mode(),
                torch.autocast(self.device.type, dtype=torch.float16, enabled=use_cuda),
            ):
                features = self.extractor(batch)
            yield features.float().cpu()

    def describe(self) -> dict[str, object]:
        """Public facts about this network (what ``GET /v1/reference`` shows)."""
        return {
            "architecture": self.architecture,
            "input_size": self.input_size,
            "feature_dim": self.feature_dim,
            "weights_sha256": self.weights_sha256,
            "weights_source": self.weights_source,
            "device": str(self.device),
        }


def _tee(batches: Iterable[np.ndarray], see: Callable[[np.ndarray], None]) -> Iterator[np.ndarray]:
    for batch in batches:
        see(batch)
        yield batch


def load_reference(
    architecture: str, weights: Path | None, device: str = "auto", seed: int = 0
) -> ReferenceNetwork:
    """Build the reference network from a local safetensors file.

    Without a file, a compact CNN is initialised from ``seed`` (random conv features: a weak
    but deterministic reference, reported as such in ``weights_source``).
    """
    spec = get_spec(architecture)
    if weights is not None:
        state = load_file(weights)
        model = build_model(architecture, num_classes=_head_classes(architecture, state))
        load_backbone(model, state)
        digest = _file_sha256(weights)
        source = f"file:{weights}"
    elif architecture.startswith("compact"):
        torch.manual_seed(seed)
        model = build_model(architecture, num_classes=1)
        digest = hashlib.sha256(save(weights_to_save(model))).hexdigest()
        source = f"seeded-random-init:{seed}"
    else:
        raise ValueError(
            f"reference architecture {architecture!r} needs a weights file "
            "(set P2L_REFERENCE_WEIGHTS to a local .safetensors file)"
        )
    extractor = feature_extractor(model).eval()
    dim = feature_dim(extractor, spec.default_input_size)
    torch_device = resolve_device(device)
    extractor = extractor.to(torch_device)
    if torch_device.type == "cuda":
        extractor = extractor.to(memory_format=torch.channels_last)
    return ReferenceNetwork(
        architecture=architecture,
        extractor=extractor,
        input_size=spec.default_input_size,
        feature_dim=dim,
        mean=spec.mean,
        std=spec.std,
        weights_sha256=digest,
        weights_source=source,
        device=torch_device,
    )


def load_backbone(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load every non-head weight strictly; ValueError names the first mismatch."""
    head = head_attribute(model) + "."
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    given = {k: v for k, v in state.items() if not k.startswith(head)}
    check_state_dict(expected, given)
    model.load_state_dict(given, strict=False)


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> None:
    """Raise ValueError describing the first missing, unexpected or mis-shaped tensor."""
    for key, tensor in expected.items():
        if key not in given:
            raise ValueError(f"weights lack {key!r} (shape {tuple(tensor.shape)})")
        if given[key].shape != tensor.shape:
            raise ValueError(
                f"weights {key!r} have shape {tuple(given[key].shape)}, "
                f"the architecture expects {tuple(tensor.shape)}"
            )
    for key in given:
        if key not in expected:
            raise ValueError(f"weights hold {key!r}, which the architecture does not have")


def _head_classes(architecture: str, state: dict[str, torch.Tensor]) -> int:
    probe = build_model(architecture, num_classes=1)
    head = head_attribute(probe) + "."
    head_biases = [v for k, v in state.items() if k.startswith(head) and k.endswith("bias")]
    return int(head_biases[-1].shape[0]) if head_biases else 1


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
