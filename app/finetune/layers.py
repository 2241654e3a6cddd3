"""Layer groups (input -> head) and layer-wise learning rates for fine-tuning."""

from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision.models import EfficientNet, MobileNetV2, MobileNetV3, ResNet

from app.architectures import CompactCNN, head_attribute

# One optimiser parameter group: "params" plus per-group settings ("lr", "weight_decay"...),
# the mapping torch.optim takes.
ParamGroup = dict[str, Any]


@dataclass(frozen=True)
class LayerGroup:
    """A named block of the model; groups are ordered from the input to the head."""

    name: str
    module: nn.Module


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Split a supported model into ordered groups: stem, each stage/block, head."""
    if isinstance(model, CompactCNN):
        stages = [LayerGroup(f"stage{i + 1}", m) for i, m in enumerate(model.stages)]
        return [LayerGroup("stem", model.stem), *stages, LayerGroup("head", model.head)]
    if isinstance(model, ResNet):
        stem = nn.ModuleList([model.conv1, model.bn1])
        layers = [LayerGroup(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]
        return [LayerGroup("stem", stem), *layers, LayerGroup("head", model.fc)]
    if isinstance(model, MobileNetV2 | MobileNetV3 | EfficientNet):
        blocks = list(model.features)
        groups = [LayerGroup("stem", blocks[0])]
        groups += [LayerGroup(f"block{i}", block) for i, block in enumerate(blocks[1:], start=1)]
        return [*groups, LayerGroup("head", model.classifier)]
    raise ValueError(f"no layer groups known for {type(model).__name__}")


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give the model a freshly initialised classifier for ``num_classes`` classes."""
    attr = head_attribute(model)
    head = getattr(model, attr)
    if isinstance(head, nn.Linear):
        setattr(model, attr, nn.Linear(head.in_features, num_classes))
        return model
    # torchvision classifiers are Sequential(..., Linear): replace the last Linear.
    last = max(i for i, layer in enumerate(head) if isinstance(layer, nn.Linear))
    head[last] = nn.Linear(head[last].in_features, num_classes)
    return model


@dataclass(frozen=True)
class LayerwiseLR:
    """Per-group learning rates: head at ``base_lr``, group k below it at ``base_lr*decay**k``.

    ``multipliers`` (one per group, input -> head) replaces the decay rule; groups below
    ``freeze_below`` (an index into the groups, input side) are frozen entirely.
    """

    base_lr: float
    decay: float = 1.0
    multipliers: tuple[float, ...] | None = None
    freeze_below: int = 0

    def group_lrs(self, count: int) -> list[float]:
        """Learning rate of each of ``count`` groups (input -> head); 0 for frozen groups."""
        if self.multipliers is not None:
            if len(self.multipliers) != count:
                raise ValueError(
                    f"{len(self.multipliers)} multipliers given for {count} layer groups"
                )
            factors = list(self.multipliers)
        else:
            factors = [self.decay ** (count - 1 - k) for k in range(count)]
        return [
            0.0 if k < self.freeze_below else self.base_lr * factor
            for k, factor in enumerate(factors)
        ]

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[ParamGroup]:
        """Optimiser param groups; freezes groups with zero rate (and their BatchNorm stats).

        Biases and normalisation parameters (1-D tensors) get no weight decay.
        """
        groups = layer_groups(model)
        if not 0 <= self.freeze_below < len(groups):
            raise ValueError(f"freeze_below must be in [0, {len(groups) - 1}]")
        param_groups: list[ParamGroup] = []
        for group, lr in zip(groups, self.group_lrs(len(groups)), strict=True):
            params = list(group.module.parameters())
            if lr == 0.0:
                for param in params:
                    param.requires_grad_(False)
                continue
            decayed = [p for p in params if p.ndim > 1]
            plain = [p for p in params if p.ndim <= 1]
            for chunk, wd in ((decayed, weight_decay), (plain, 0.0)):
                if chunk:
                    param_groups.append(
                        {"params": chunk, "lr": lr, "weight_decay": wd, "group": group.name}
                    )
        return param_groups


def count_trainable(model: nn.Module) -> int:
    """Number of parameters that will be updated."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe_groups(model: nn.Module, schedule: LayerwiseLR) -> list[dict[str, object]]:
    """Name, size and learning rate of each group (for job results)."""
    groups = layer_groups(model)
    return [
        {
            "group": g.name,
            "parameters": sum(p.numel() for p in g.module.parameters()),
            "lr": lr,
            "frozen": lr == 0.0,
        }
        for g, lr in zip(groups, schedule.group_lrs(len(groups)), strict=True)
    ]
