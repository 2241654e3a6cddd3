"""The reference network: one fixed feature extractor that embeds every dataset the same way.

``ReferenceNetwork.embed`` is the single entry point: image files in, pooled features out,
one batch at a time, with image decoding done ahead of the model (app.imaging.loading).
"""

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from app.families import (
    build_model,
    feature_dim,
    feature_extractor,
    get_spec,
    head_attribute,
    weights_to_save,
)
from app.imaging.loading import decode_threads, pixel_batches, usable_cpus

# From this input size on the forward pass dominates decoding (resnet18 at 224 px: ~30 ms
# an image on one core, decoding ~0.7 ms), so torch gets every CPU.
FORWARD_BOUND_SIZE = 128


def share_cpus_with_decoding(loader_threads: int = 0, input_size: int | None = None) -> None:
    """Give torch the CPUs that image decoding does not use (set once per process).

    Decoding and torch's own threads otherwise compete for the same cores; on 2 cores at
    32 px, one torch thread beside the decoders embedded faster than two: 1.2x with the
    process pool, 1.5x with a decoding thread. From
    ``FORWARD_BOUND_SIZE`` on, decoding is a few percent of the work: torch gets them all.
    """
    cpus = usable_cpus()
    if input_size is not None and input_size >= FORWARD_BOUND_SIZE:
        torch.set_num_threads(cpus)
    else:
        torch.set_num_threads(max(1, cpus - decode_threads(loader_threads)))


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
    # CUDA-only switches (no-ops on CPU): float16 autocast, channels-last convolutions,
    # page-locked host batches with non-blocking copies.
    mixed_precision: bool = True
    channels_last: bool = True
    pin_memory: bool = True
    # Large sets decode in a process pool (see app.imaging.loading); False: threads only.
    decode_processes: bool = True

    def share_cpus(self, loader_threads: int = 0) -> None:
        """``share_cpus_with_decoding`` for this network's input size."""
        share_cpus_with_decoding(loader_threads, self.input_size)

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
        processes = None if self.decode_processes else False
        batches = pixel_batches(paths, self.input_size, batch_size, threads, processes)
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
        pin = use_cuda and self.pin_memory
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255
        for pixels in batches:
            host = torch.from_numpy(np.ascontiguousarray(pixels))
            if pin:
                # The caching host allocator keeps the pinned block until the copy is done.
                host = host.pin_memory()
            batch = host.to(self.device, non_blocking=pin)
            # (B, H, W, 3) viewed as NCHW is channels-last already: kept on CPU, where
            # convolutions ran 1.4-1.5x faster on it than on NCHW (compact_cnn at 32 px,
            # resnet18 at 224 px); on CUDA the switch decides.
            batch = batch.permute(0, 3, 1, 2).float().sub_(mean).div_(std)
            if use_cuda and not self.channels_last:
                batch = batch.contiguous()
            with (
                torch.inference_mode(),
                torch.autocast(
                    self.device.type,
                    dtype=torch.float16,
                    enabled=use_cuda and self.mixed_precision,
                ),
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
    architecture: str,
    weights: Path | None,
    device: str = "auto",
    seed: int = 0,
    *,
    mixed_precision: bool = True,
    channels_last: bool = True,
    pin_memory: bool = True,
    decode_processes: bool = True,
) -> ReferenceNetwork:
    """Build the reference network from a local safetensors file.

    Without a file, a compact CNN is initialised from ``seed`` (random conv features: a weak
    but deterministic reference, reported as such in ``weights_source``). The switches are
    ``ReferenceNetwork``'s (the CUDA ones are ignored on CPU).
    """
    spec = get_spec(architecture)
    if weights is not None:
        state = load_file(weights)
        model = build_model(architecture, num_classes=_head_classes(architecture, state))
        load_backbone(model, state)
        digest = _file_sha256(weights)
        source = f"file:{weights.name}"  # not its path: where the server keeps files is its own
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
    if torch_device.type == "cuda" and channels_last:
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
        mixed_precision=mixed_precision,
        channels_last=channels_last,
        pin_memory=pin_memory,
        decode_processes=decode_processes,
    )


def load_backbone(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load every non-head weight strictly; ValueError names the first mismatch."""
    head = head_attribute(model) + "."
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    given = {k: v for k, v in state.items() if not k.startswith(head)}
    check_state_dict(expected, given)
    model.load_state_dict(given, strict=False)


def check_state_dict(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> None:
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
