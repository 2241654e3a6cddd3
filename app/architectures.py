"""Model architectures the service can build: the project's compact CNNs and torchvision models.

Every architecture is split into a *feature extractor* (input -> non-negative pooled feature)
and a *head* (feature -> logits); the reference network uses the first, sources both.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn


class CompactCNN(nn.Module):
    """Small VGG-style CNN for 32-64 px images: strided stem, pooled conv stages, GAP, head."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, widths[0], stride=2)
        stages = []
        in_ch = widths[0]
        for width in widths:
            stages.append(
                nn.Sequential(
                    _conv_bn_relu(in_ch, width), _conv_bn_relu(width, width), nn.MaxPool2d(2)
                )
            )
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(in_ch, num_classes)
        self.feature_dim = in_ch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (after ReLU, so non-negative)."""
        features: torch.Tensor = self.pool(self.stages(self.stem(x)))
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(x))
        return logits


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to build one architecture and feed it images."""

    name: str
    build: Callable[[int], nn.Module]
    default_input_size: int
    # Normalisation applied after scaling pixels to [0, 1].
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_HALF = (0.5, 0.5, 0.5)

COMPACT_ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec
    for spec in (
        ArchitectureSpec("compact_cnn", lambda n: CompactCNN(n, (32, 64, 128)), 32, _HALF, _HALF),
        ArchitectureSpec(
            "compact_cnn_small", lambda n: CompactCNN(n, (16, 32, 64)), 32, _HALF, _HALF
        ),
        ArchitectureSpec(
            "compact_cnn_wide", lambda n: CompactCNN(n, (32, 64, 128, 256)), 64, _HALF, _HALF
        ),
    )
}

# torchvision families whose layer structure the service knows (feature extractor + head).
TORCHVISION_ARCHITECTURES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
)


def known_architectures() -> list[str]:
    """Names accepted wherever an architecture is asked for."""
    return [*COMPACT_ARCHITECTURES, *TORCHVISION_ARCHITECTURES]


def get_spec(name: str) -> ArchitectureSpec:
    """Look up an architecture by name; ValueError names the valid choices."""
    if name in COMPACT_ARCHITECTURES:
        return COMPACT_ARCHITECTURES[name]
    if name in TORCHVISION_ARCHITECTURES:
        builder = getattr(torchvision.models, name)
        return ArchitectureSpec(
            name, lambda n: builder(weights=None, num_classes=n), 224, _IMAGENET_MEAN, _IMAGENET_STD
        )
    raise ValueError(f"unknown architecture {name!r}; choose one of {known_architectures()}")


def build_model(name: str, num_classes: int) -> nn.Module:
    """A freshly initialised classifier of the named architecture."""
    return get_spec(name).build(num_classes)


def load_model(name: str, num_classes: int, weights: Path) -> nn.Module:
    """A classifier with its weights from a safetensors file (float16 files are widened)."""
    model = build_model(name, num_classes)
    model.load_state_dict({k: v.float() for k, v in load_file(weights).items()})
    return model.eval()


def weights_to_save(model: nn.Module, half: bool = False) -> dict[str, torch.Tensor]:
    """The model's state as contiguous CPU tensors, ready for safetensors (optionally float16)."""
    return {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }


def head_attribute(model: nn.Module) -> str:
    """Name of the attribute holding the classifier head."""
    for attr in ("head", "fc", "classifier"):
        if hasattr(model, attr):
            return attr
    raise ValueError(f"cannot find the classifier head of {type(model).__name__}")


def feature_extractor(model: nn.Module) -> nn.Module:
    """The model with its head removed, returning pooled non-negative features."""
    if isinstance(model, CompactCNN):
        return _CompactFeatures(model)
    attr = head_attribute(model)
    setattr(model, attr, nn.Identity())
    # torchvision's MobileNetV3 ends in Hardswish, which can dip below zero; P2L needs
    # non-negative features to turn means into distributions.
    return nn.Sequential(model, nn.ReLU())


def feature_dim(extractor: nn.Module, input_size: int) -> int:
    """Feature dimension of an extractor, found with one dummy forward pass."""
    was_training = extractor.training
    extractor.eval()
    with torch.inference_mode():
        dim = extractor(torch.zeros(1, 3, input_size, input_size)).shape[1]
    extractor.train(was_training)
    return int(dim)


class _CompactFeatures(nn.Module):
    def __init__(self, model: CompactCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)
