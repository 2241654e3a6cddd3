"""The project's compact CNNs: small VGG-style networks for 32-64 px images."""

import torch
from torch import nn

from app.families.base import HALF, ArchitectureSpec, Layout, ModelFamily


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


class _CompactFeatures(nn.Module):
    def __init__(self, model: CompactCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def _layout(model: CompactCNN) -> Layout:
    stages = [(f"stage{i + 1}", (f"stages.{i}",)) for i in range(len(model.stages))]
    return [("stem", ("stem",)), *stages, ("head", ("head",))]


FAMILY = ModelFamily[CompactCNN](
    name="compact",
    model_types=(CompactCNN,),
    architectures=(
        ArchitectureSpec("compact_cnn", lambda n: CompactCNN(n, (32, 64, 128)), 32, HALF, HALF),
        ArchitectureSpec(
            "compact_cnn_small", lambda n: CompactCNN(n, (16, 32, 64)), 32, HALF, HALF
        ),
        ArchitectureSpec(
            "compact_cnn_wide", lambda n: CompactCNN(n, (32, 64, 128, 256)), 64, HALF, HALF
        ),
    ),
    layout=_layout,
    head_attribute="head",
    # Its pooled features come before the head already: no need to strip it.
    features=_CompactFeatures,
)
