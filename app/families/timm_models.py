"""timm's classifiers, an optional extra (``pip install -e '.[timm]'``): ``timm/<model_name>``.

Any model name ``timm.list_models()`` knows is an architecture once prefixed with ``timm/``
(``timm/resnet50``, ``timm/convnext_tiny``), optionally with a pretrained tag
(``timm/resnet50.a1_in1k``) whose configuration then gives the input size and normalisation.
The list is not enumerated anywhere: timm knows over a thousand models, and GET
/v1/architectures names the installed timm version instead.

Models are created with ``pretrained=False`` (the service never downloads weights) and get
their weights from the user's file. What the service needs of a family comes from timm's own
model API, which every timm classifier implements:

* layer groups: ``group_matcher(coarse=True)`` (the groups timm's layer-wise decay uses),
  with the classifier pulled out into a last ``head`` group;
* features: ``forward_head(forward_features(x), pre_logits=True)``, the classifier's input;
* the head: ``pretrained_cfg["classifier"]`` names it, ``reset_classifier`` replaces it;
* weight decay: ``no_weight_decay()`` (position embeddings, class tokens...).
"""

import importlib.metadata
import importlib.util
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from app.families.base import ArchitectureSpec, Layout, ModelFamily

PREFIX = "timm/"
EXTRA = "pip install 'p2l-service[timm]'"


def is_timm_name(architecture: str) -> bool:
    """True for an architecture named like ``timm/<model_name>``."""
    return architecture.startswith(PREFIX)


def installed_version() -> str | None:
    """timm's version when it is installed, else None (without importing it: 4 s)."""
    if importlib.util.find_spec("timm") is None:
        return None
    return importlib.metadata.version("timm")


def _timm() -> Any:
    """The timm module; ValueError naming the extra when it is not installed."""
    try:
        import timm
    except ImportError:
        raise ValueError(
            f"timm architectures need the timm package, which this service lacks: {EXTRA}"
        ) from None
    return timm


# Bounded: the names come from requests; each entry is a small config and a builder.
@lru_cache(maxsize=128)
def spec(architecture: str) -> ArchitectureSpec:
    """The spec of ``timm/<model_name>[.<tag>]``; ValueError (the reason) if it has none."""
    timm = _timm()
    name = architecture.removeprefix(PREFIX)
    if not timm.is_model(name):
        raise ValueError(
            f"unknown timm model {name!r} (architecture {architecture!r}): timm "
            f"{installed_version()} knows the names timm.list_models() lists"
        )
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # an unknown pretrained tag
        raise ValueError(f"architecture {architecture!r}: {exc}") from None
    if cfg is None:
        raise ValueError(f"timm has no configuration for {architecture} (input size, mean, std)")
    if len(cfg.input_size) != 3 or cfg.input_size[0] != 3:
        raise ValueError(f"{architecture} takes input {cfg.input_size}, not RGB images")
    size = int(cfg.input_size[-1])
    try:
        # Shapes only (no memory): what the service will ask of the model, tried once.
        with torch.device("meta"):
            probe = _create(name, 2).eval()
            classifier = _api(probe).get_classifier()
            if isinstance(classifier, nn.Linear):
                _layout(probe)
                _TimmFeatures(probe)(torch.zeros(1, 3, size, size))
    except Exception as exc:  # timm's thousand models: any failure is this one's
        raise ValueError(
            f"{architecture} cannot be used: building it failed ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(classifier, nn.Linear):
        # Distilled models (two heads) and convolutional classifiers: the service scores,
        # replaces and probes one Linear head.
        kind = type(classifier).__name__
        raise ValueError(f"{architecture}'s classifier is a {kind}, not one Linear layer")

    def build(num_classes: int) -> nn.Module:
        return _create(name, num_classes)

    return ArchitectureSpec(
        name=architecture,
        build=build,
        # The service feeds square images; timm's non-square inputs are rare (then: width).
        default_input_size=size,
        mean=_rgb(cfg.mean),
        std=_rgb(cfg.std),
        # A ViT's position embedding fixes its size (timm says so per model).
        fixed_input_size=bool(cfg.fixed_input_size),
    )


def _create(name: str, num_classes: int) -> nn.Module:
    model: nn.Module = _timm().create_model(name, pretrained=False, num_classes=num_classes)
    return model


def _api(model: nn.Module) -> Any:
    """The model as timm's API (get_classifier, forward_head...), which torch's stubs lack."""
    return model


def _rgb(values: Any) -> tuple[float, float, float]:
    first, second, third = (float(v) for v in values)
    return first, second, third


def is_timm_model(model: nn.Module) -> bool:
    """True for a model built by timm (timm's classes have no common base of their own)."""
    return type(model).__module__.startswith("timm.")


def head_attribute(model: nn.Module) -> str:
    """The dotted name of the classifier (``fc``, ``head``, ``head.fc``, ``classifier``)."""
    classifier = _api(model).get_classifier()
    for name, module in model.named_modules():
        if module is classifier:
            return str(name)
    raise ValueError(f"{type(model).__name__}'s classifier is not one of its modules")


def reset_head(model: nn.Module, num_classes: int) -> None:
    """A fresh classifier for ``num_classes`` (timm's own: it knows the model's pooling)."""
    _api(model).reset_classifier(num_classes)


def _layout(model: nn.Module) -> Layout:
    """timm's coarse groups, input -> head, the classifier's parameters as the last group."""
    head = head_attribute(model) + "."
    named = dict(model.named_parameters())
    heads = tuple(k for k in named if k.startswith(head))
    matcher = getattr(model, "group_matcher", None)
    timm_groups: list[list[str]]
    if matcher is None:  # a model without timm's grouping: one body group
        timm_groups = [list(named)]
        first = "body"
    else:
        grouped = _timm().models.group_parameters(model, matcher(coarse=True))
        timm_groups = [grouped[k] for k in sorted(grouped)]
        first = "stem" if "stem" in matcher(coarse=True) else "group0"
    layout: Layout = []
    for members in timm_groups:
        body = tuple(k for k in members if not k.startswith(head))
        if not body:
            continue
        if layout and all(named[k].ndim <= 1 for k in body):
            # A group of vectors only (a final norm) goes with the group before it: a rate
            # of its own between the top block's and the head's would be arbitrary.
            name, prefixes = layout[-1]
            layout[-1] = (name, (*prefixes, *body))
            continue
        layout.append((first if not layout else f"group{len(layout)}", body))
    return [*layout, ("head", heads)]


def _no_weight_decay(model: nn.Module) -> frozenset[str]:
    named = getattr(model, "no_weight_decay", None)
    return frozenset(named()) if named is not None else frozenset()


class _TimmFeatures(nn.Module):
    """Pooled pre-logits features, made non-negative (P2L turns means into distributions)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = _api(self.model)
        pooled: torch.Tensor = model.forward_head(model.forward_features(x), pre_logits=True)
        return torch.relu(pooled.flatten(1))


FAMILY = ModelFamily[nn.Module](
    name="timm",
    model_types=(),
    # Resolved by name (``spec``), never listed: timm knows over a thousand.
    architectures=(),
    layout=_layout,
    head_attribute=head_attribute,
    features=_TimmFeatures,
    no_weight_decay=_no_weight_decay,
    claims=is_timm_model,
    reset_head=reset_head,
)
