"""The architectures the service builds, with their layer groups."""

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.problems import problem_responses
from app.errors import NotFound
from app.families import architecture_catalogue, describe_architecture
from app.families.timm_models import installed_version
from app.schemas import ArchitectureList, ArchitectureOut

router = APIRouter(prefix="/v1/architectures", tags=["architectures"])


@router.get("", response_model=ArchitectureList, summary="List the architectures")
def list_architectures() -> ArchitectureList:
    """Every listed architecture a source can have: family, input size, normalisation, layer
    groups (input -> head) and feature dimension. Fixed for the life of the service. With
    timm installed (`timm_version`), any timm model is one too, named timm/ and the model's
    name (timm/convnext_tiny): not listed, described one at a time by
    GET /v1/architectures/timm/convnext_tiny."""
    items = [ArchitectureOut.model_validate(info) for info in architecture_catalogue()]
    return ArchitectureList(items=items, timm_version=installed_version())


@router.get(
    "/{name:path}",
    response_model=ArchitectureOut,
    summary="Describe one architecture (a timm model too)",
    responses=problem_responses(
        _404="No such architecture, a timm model timm does not know or the service cannot "
        "use (no single Linear classifier), or timm is not installed"
    ),
)
def get_architecture(
    name: Annotated[
        str,
        Path(
            description="A listed name (resnet18) or timm/ and a timm model name, optionally "
            "with a pretrained tag that sets input size and normalisation "
            "(timm/resnet50.a1_in1k)",
            examples=["timm/convnext_atto"],
        ),
    ],
) -> ArchitectureOut:
    """What GET /v1/architectures lists of one architecture: how to register a source of it
    (input size, normalisation) and how it is fine-tuned (layer groups)."""
    try:
        info = describe_architecture(name)
    except ValueError as exc:
        raise NotFound(str(exc)) from None
    return ArchitectureOut.model_validate(info)
