"""The active reference network."""

from fastapi import APIRouter

from app.api.deps import StateDep
from app.schemas import ReferenceOut

router = APIRouter(prefix="/v1/reference", tags=["reference"])


@router.get("", response_model=ReferenceOut, summary="Describe the active reference network")
def get_reference(state: StateDep) -> dict[str, object]:
    """Architecture, input size, feature dimension and weights digest of the reference network."""
    return state.reference.describe()
