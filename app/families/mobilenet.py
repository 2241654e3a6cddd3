"""torchvision's MobileNets (v2, v3 small/large): ``features`` blocks, ``classifier`` head."""

from torch import nn
from torchvision.models import EfficientNet, MobileNetV2, MobileNetV3

from app.families.base import Layout, ModelFamily, torchvision_spec


def blocks_layout(model: MobileNetV2 | MobileNetV3 | EfficientNet) -> Layout:
    """``features[0]`` is the stem, each later entry a block, ``classifier`` the head."""
    count = len(model.features)
    blocks = [(f"block{i}", (f"features.{i}",)) for i in range(1, count)]
    return [("stem", ("features.0",)), *blocks, ("head", ("classifier",))]


FAMILY = ModelFamily[nn.Module](
    name="mobilenet",
    model_types=(MobileNetV2, MobileNetV3),
    architectures=tuple(
        torchvision_spec(n) for n in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
    ),
    layout=blocks_layout,
    # The whole classifier: for v3 its hidden layer too (Linear, Hardswish, Dropout, Linear).
    head_attribute="classifier",
)
