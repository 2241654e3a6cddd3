"""Layer-wise learning rates over the layer groups of ``app.families`` (input -> head)."""

from dataclasses import dataclass
from typing import Any

from torch import nn

from app.families import layer_groups, no_weight_decay

# One optimiser parameter group: "params" plus per-group settings ("lr", "weight_decay"...),
# the mapping torch.optim takes.
ParamGroup = dict[str, Any]


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

        Biases, normalisation parameters (1-D tensors) and whatever else the model's family
        names (a ViT's class token and position embedding) get no weight decay.
        """
        groups = layer_groups(model)
        plain_names = no_weight_decay(model)
        if not 0 <= self.freeze_below < len(groups):
            raise ValueError(f"freeze_below must be in [0, {len(groups) - 1}]")
        param_groups: list[ParamGroup] = []
        for group, lr in zip(groups, self.group_lrs(len(groups)), strict=True):
            if lr == 0.0:
                for param in group.parameters():
                    param.requires_grad_(False)
                continue
            named = group.named_parameters
            decayed = [p for name, p in named if name not in plain_names]
            plain = [p for name, p in named if name in plain_names]
            for chunk, wd in ((decayed, weight_decay), (plain, 0.0)):
                if chunk:
                    param_groups.append(
                        {"params": chunk, "lr": lr, "weight_decay": wd, "group": group.name}
                    )
        return param_groups


def describe_groups(model: nn.Module, schedule: LayerwiseLR) -> list[dict[str, object]]:
    """Name, size and learning rate of each group (for job results)."""
    groups = layer_groups(model)
    return [
        {
            "group": g.name,
            "parameters": g.numel(),
            "lr": lr,
            "frozen": lr == 0.0,
        }
        for g, lr in zip(groups, schedule.group_lrs(len(groups)), strict=True)
    ]
