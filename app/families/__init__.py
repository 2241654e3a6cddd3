"""Model families: every architecture the service can build, and what it knows about each.

A family (``base.ModelFamily``, one module each) declares its architectures (builder, input
size, normalisation), its layer groups (input -> head), its head, its feature extractor and
the parameters spared weight decay. Adding a family is one module and one line in
``FAMILIES``; nothing else in the service branches on the model's class.

Every architecture is split into a *feature extractor* (input -> non-negative pooled feature)
and a *head* (feature -> logits); the reference network uses the first, sources both.

timm's classifiers (``app.families.timm_models``, an optional extra) are architectures named
``timm/<model_name>``, resolved by name rather than listed.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from types import MappingProxyType

import torch
from safetensors.torch import load_file
from torch import nn

from app.families import compact, efficientnet, mobilenet, resnet, timm_models, vit
from app.families.base import AnyFamily, ArchitectureSpec, LayerGroup

__all__ = [
    "FAMILIES",
    "ArchitectureInfo",
    "ArchitectureSpec",
    "LayerGroup",
    "architecture_catalogue",
    "build_model",
    "describe_architecture",
    "expected_state",
    "family_of",
    "feature_dim",
    "feature_extractor",
    "get_spec",
    "head",
    "head_attribute",
    "head_outputs",
    "known_architectures",
    "layer_groups",
    "load_model",
    "no_weight_decay",
    "replace_head",
    "weights_to_save",
]

# The registry, in the order architectures are listed.
FAMILIES: tuple[AnyFamily, ...] = (
    compact.FAMILY,
    resnet.FAMILY,
    mobilenet.FAMILY,
    efficientnet.FAMILY,
    vit.FAMILY,
    # Last: it claims models by their module (timm.*), not by a class of its own.
    timm_models.FAMILY,
)

_SPECS: dict[str, tuple[AnyFamily, ArchitectureSpec]] = {
    spec.name: (family, spec) for family in FAMILIES for spec in family.architectures
}


def known_architectures() -> list[str]:
    """The listed architectures (besides them: ``timm/<model_name>`` when timm is installed)."""
    return list(_SPECS)


def get_spec(name: str) -> ArchitectureSpec:
    """Look up an architecture by name; ValueError names the valid choices (or, for a timm
    name, why it cannot be built: timm missing, a name timm does not know...)."""
    if timm_models.is_timm_name(name):
        return timm_models.spec(name)
    if name not in _SPECS:
        raise ValueError(
            f"unknown architecture {name!r}; choose one of {known_architectures()}, or "
            f"{timm_models.PREFIX}<model_name> for a timm model"
        )
    return _SPECS[name][1]


def build_model(name: str, num_classes: int) -> nn.Module:
    """A freshly initialised classifier of the named architecture."""
    return get_spec(name).build(num_classes)


# Bounded: the class count comes from requests (up to P2L_MAX_SOURCE_CLASSES).
@lru_cache(maxsize=32)
def expected_state(name: str, num_classes: int) -> Mapping[str, torch.Tensor]:
    """The state dict a classifier of this architecture has, as meta tensors (shapes and
    dtypes, no storage); built once per architecture and class count while recently used,
    for checking uploaded weights (read only: it is shared)."""
    with torch.device("meta"):
        return MappingProxyType(build_model(name, num_classes).state_dict())


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


def family_of(model: nn.Module) -> AnyFamily:
    """The family a model belongs to; ValueError for a model no family knows."""
    for family in FAMILIES:
        if isinstance(model, family.model_types) or (
            family.claims is not None and family.claims(model)
        ):
            return family
    raise ValueError(f"no model family knows {type(model).__name__}")


def head_attribute(model: nn.Module) -> str:
    """Name of the attribute holding the classifier head (its state-dict prefix too); dotted
    for a submodule's (``head.fc``)."""
    attr = family_of(model).head_attribute
    return attr if isinstance(attr, str) else attr(model)


def head(model: nn.Module) -> nn.Module:
    """The classifier head: an nn.Linear, or a Sequential ending in one."""
    return model.get_submodule(head_attribute(model))


def head_outputs(model: nn.Module) -> int:
    """How many classes the head scores (its last Linear's outputs)."""
    return _linears(head(model))[-1].out_features


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give the model a freshly initialised classifier for ``num_classes`` classes."""
    family = family_of(model)
    if family.reset_head is not None:
        family.reset_head(model, num_classes)
        return model
    attr = head_attribute(model)
    old = model.get_submodule(attr)
    if isinstance(old, nn.Linear):
        model.set_submodule(attr, nn.Linear(old.in_features, num_classes))
        return model
    # torchvision classifiers are Sequential(..., Linear): replace the last Linear only, so
    # MobileNetV3's hidden layer keeps its (pretrained) weights.
    assert isinstance(old, nn.Sequential), f"{type(model).__name__}.{attr} is {type(old)}"
    last = max(i for i, layer in enumerate(old) if isinstance(layer, nn.Linear))
    old[last] = nn.Linear(_linears(old)[-1].in_features, num_classes)
    return model


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Split a model into its family's ordered groups (input -> head, the head last).

    ValueError unless every parameter lands in exactly one group: a parameter left out
    would silently never train, one in two groups would get two learning rates.
    """
    named = dict(model.named_parameters())
    owner: dict[str, str] = {}
    groups = []
    for name, prefixes in family_of(model).layout(model):
        members = tuple(
            (key, param)
            for key, param in named.items()
            if any(key == p or key.startswith(p + ".") for p in prefixes)
        )
        if not members:
            raise ValueError(f"layer group {name!r} of {type(model).__name__} holds nothing")
        for key, _ in members:
            if key in owner:
                raise ValueError(f"{key} is in layer groups {owner[key]!r} and {name!r}")
            owner[key] = name
        groups.append(LayerGroup(name, members))
    if missing := [key for key in named if key not in owner]:
        raise ValueError(f"{type(model).__name__} parameters in no layer group: {missing[:5]}")
    return groups


def no_weight_decay(model: nn.Module) -> frozenset[str]:
    """Names of the parameters trained without weight decay: every 1-D one (biases and
    normalisation scales, whose decay only fights the normalisation) and the family's own."""
    named = family_of(model).no_weight_decay
    extra = named if isinstance(named, frozenset) else named(model)
    return frozenset(k for k, p in model.named_parameters() if p.ndim <= 1 or k in extra)


def feature_extractor(model: nn.Module) -> nn.Module:
    """The model with its head removed, returning pooled non-negative features."""
    family = family_of(model)
    if family.features is not None:
        return family.features(model)
    model.set_submodule(head_attribute(model), nn.Identity())
    # torchvision's MobileNetV3 ends in Hardswish and a ViT in LayerNorm, both of which can
    # dip below zero; P2L needs non-negative features to turn means into distributions.
    return nn.Sequential(model, nn.ReLU())


def feature_dim(extractor: nn.Module, input_size: int) -> int:
    """Feature dimension of an extractor, found with one dummy forward pass."""
    was_training = extractor.training
    extractor.eval()
    with torch.inference_mode():
        dim = extractor(torch.zeros(1, 3, input_size, input_size)).shape[1]
    extractor.train(was_training)
    return int(dim)


@dataclass(frozen=True)
class ArchitectureInfo:
    """One architecture as GET /v1/architectures lists it."""

    name: str
    family: str
    input_size: int
    fixed_input_size: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layer_groups: tuple[str, ...]
    feature_dim: int


@cache  # the registry is fixed for the life of the process
def architecture_catalogue() -> tuple[ArchitectureInfo, ...]:
    """Every listed architecture with its layer groups and feature dimension."""
    return tuple(describe_architecture(name) for name in _SPECS)


# Bounded: timm names come from requests (GET /v1/architectures/timm/...).
@lru_cache(maxsize=64)
def describe_architecture(name: str) -> ArchitectureInfo:
    """One architecture (a timm name too) as GET /v1/architectures lists it; ValueError as
    ``get_spec``.

    The model is built on the meta device: shapes without memory, so even vit_b_16's 86M
    parameters cost nothing, and the forward pass that finds the feature size is shape-only.
    """
    spec = get_spec(name)
    with torch.device("meta"):
        model = spec.build(2)
        family = family_of(model)
        groups = tuple(g.name for g in layer_groups(model))
        dim = feature_dim(feature_extractor(model), spec.default_input_size)
    return ArchitectureInfo(
        name=name,
        family=family.name,
        input_size=spec.default_input_size,
        fixed_input_size=spec.fixed_input_size,
        mean=spec.mean,
        std=spec.std,
        layer_groups=groups,
        feature_dim=dim,
    )


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]
