"""The types a model family is declared with (kept apart from the registry so that the family
modules can import them while ``app.families`` imports the family modules)."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torchvision
from torch import nn

RGB = tuple[float, float, float]
IMAGENET_MEAN: RGB = (0.485, 0.456, 0.406)
IMAGENET_STD: RGB = (0.229, 0.224, 0.225)
HALF: RGB = (0.5, 0.5, 0.5)

Model = TypeVar("Model", bound=nn.Module)

# A family's split of one model, input -> head: (group name, parameter-name prefixes). A
# prefix names a module ("stages.0": all its parameters) or one bare parameter ("class_token").
Layout = list[tuple[str, tuple[str, ...]]]


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to build one architecture and feed it images."""

    name: str
    build: Callable[[int], nn.Module]
    default_input_size: int
    # Normalisation applied after scaling pixels to [0, 1].
    mean: RGB
    std: RGB
    # A ViT's position embedding has one entry per patch of this size: other sizes do not run.
    fixed_input_size: bool = False


def torchvision_spec(name: str, fixed_input_size: bool = False) -> ArchitectureSpec:
    """A torchvision ImageNet classifier (224 px), randomly initialised: the zoo's files hold
    the weights."""
    builder: Any = getattr(torchvision.models, name)
    return ArchitectureSpec(
        name,
        lambda n: builder(weights=None, num_classes=n),
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
        fixed_input_size,
    )


@dataclass(frozen=True)
class ModelFamily(Generic[Model]):
    """Everything the service knows about one family of classifiers, declared in one place.

    ``layout`` splits a model into ordered layer groups (input -> head) by parameter-name
    prefixes, so a group can hold bare parameters (a ViT's class token), not only modules.
    """

    name: str
    # The classes whose instances belong to the family (``family_of`` looks a model up).
    model_types: tuple[type[nn.Module], ...]
    architectures: tuple[ArchitectureSpec, ...]
    layout: Callable[[Model], Layout]
    # Attribute of the classifier head: an nn.Linear, or a Sequential ending in one. A dotted
    # path names a submodule ("head.fc"); a callable finds it per model (timm's differ).
    head_attribute: str | Callable[[Model], str]
    # Model -> pooled non-negative features; None: the head becomes Identity, ReLU after it.
    features: Callable[[Model], nn.Module] | None = None
    # Parameters spared weight decay besides every 1-D one (biases, norms); a callable names
    # them per model.
    no_weight_decay: frozenset[str] | Callable[[Model], frozenset[str]] = field(
        default_factory=frozenset
    )
    # For a family whose models share no class of their own (timm's): True for its models.
    claims: Callable[[nn.Module], bool] | None = None
    # Gives the model a new head for n classes in place; None: its last Linear is replaced.
    reset_head: Callable[[Model, int], None] | None = None


@dataclass(frozen=True)
class LayerGroup:
    """A named block of the model's parameters; groups are ordered from the input to the head."""

    name: str
    # (name in model.named_parameters(), parameter), in the model's order.
    named_parameters: tuple[tuple[str, nn.Parameter], ...]

    def parameters(self) -> list[nn.Parameter]:
        """The group's parameters."""
        return [param for _, param in self.named_parameters]

    def numel(self) -> int:
        """How many numbers the group holds."""
        return sum(param.numel() for _, param in self.named_parameters)


# The registry holds families of different model types; the Any is confined here.
AnyFamily = ModelFamily[Any]
