"""torchvision's ResNets: a stem (conv1, bn1), four residual stages, the ``fc`` head."""

from torchvision.models import ResNet

from app.families.base import Layout, ModelFamily, torchvision_spec


def _layout(model: ResNet) -> Layout:
    layers = [(f"layer{i}", (f"layer{i}",)) for i in range(1, 5)]
    return [("stem", ("conv1", "bn1")), *layers, ("head", ("fc",))]


FAMILY = ModelFamily[ResNet](
    name="resnet",
    model_types=(ResNet,),
    architectures=tuple(torchvision_spec(n) for n in ("resnet18", "resnet34", "resnet50")),
    layout=_layout,
    head_attribute="fc",
)
