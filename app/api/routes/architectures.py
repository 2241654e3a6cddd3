"""The architectures the service builds, with their layer groups."""

from fastapi import APIRouter

from app.families import architecture_catalogue
from app.schemas import ArchitectureList, ArchitectureOut

router = APIRouter(prefix="/v1/architectures", tags=["architectures"])


@router.get("", response_model=ArchitectureList, summary="List the architectures")
def list_architectures() -> ArchitectureList:
    """Every architecture a source can have: family, input size, normalisation, layer groups
    (input -> head) and feature dimension. Fixed for the life of the service."""
    items = [ArchitectureOut.model_validate(info) for info in architecture_catalogue()]
    return ArchitectureList(items=items)
