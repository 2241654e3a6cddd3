"""torchvision's EfficientNets (b0, b1): laid out like the MobileNets they derive from."""

from torch import nn
from torchvision.models import EfficientNet

from app.families.base import ModelFamily, torchvision_spec
from app.families.mobilenet import blocks_layout

FAMILY = ModelFamily[nn.Module](
    name="efficientnet",
    model_types=(EfficientNet,),
    architectures=tuple(torchvision_spec(n) for n in ("efficientnet_b0", "efficientnet_b1")),
    layout=blocks_layout,
    head_attribute="classifier",
)
