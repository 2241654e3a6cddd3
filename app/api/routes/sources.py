"""The source zoo: register pretrained models with their training data's signature."""

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status
from fastapi.responses import FileResponse

from app.api.deps import (
    PAGE_PROBLEMS,
    ContextDep,
    PageSize,
    PageToken,
    PrincipalDep,
    SessionDep,
    SourceId,
    StateDep,
)
from app.api.examples import DATASET_ID
from app.api.idempotency import IdempotencyHeader, digest_files, idempotent
from app.api.problems import problem_responses
from app.errors import InvalidInput
from app.models import Source
from app.schemas import Page, SourceOut
from app.services import sources as service
from app.services.access import Principal
from app.services.finetunes import ensure_no_active_job_uses
from app.zoo import plots

# class_names in characters: the multipart parser's cap on one form field (1 MiB) anyway.
MAX_CLASS_NAMES_CHARS = 1024**2


def source_out(source: Source, principal: Principal) -> SourceOut:
    """A source as ``principal`` may see it: a shared source of another project names
    neither that project nor its dataset (operators see everything)."""
    out = SourceOut.model_validate(source)
    if source.project_id != principal.project_id and not principal.is_operator:
        out.project_id = out.dataset_id = None
    return out


router = APIRouter(prefix="/v1/sources", tags=["sources"])

PNG = {"content": {"image/png": {}}, "description": "PNG image"}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SourceOut,
    summary="Register a pretrained source model",
    responses=problem_responses(
        _422="Weights do not fit the architecture or hold NaN/Inf, num_classes or the "
        "signature's classes are above P2L_MAX_SOURCE_CLASSES, a class name is above "
        "P2L_MAX_NAME_BYTES, or the signature is malformed, non-finite or implausibly large"
    ),
)
def register_source(
    state: StateDep,
    ctx: ContextDep,
    response: Response,
    idempotency_key: IdempotencyHeader,
    weights: Annotated[UploadFile, File(description="Model weights (.safetensors)")],
    architecture: Annotated[
        str,
        Form(
            max_length=64,
            description="compact_cnn, vit_tiny, a torchvision name (resnet18, vit_b_16, ...): "
            "GET /v1/architectures lists them; with the timm extra also timm/ and any timm "
            "model name (timm/convnext_tiny)",
            examples=["compact_cnn"],
        ),
    ],
    num_classes: Annotated[
        int, Form(ge=1, description="Outputs of the classifier head", examples=[5])
    ],
    name: Annotated[
        str,
        Form(
            min_length=1,
            max_length=200,
            description="Its name in the zoo: unique in the project (a name it holds already: "
            "409), not 32 hex digits, not best, race or map.png.",
            examples=["tops"],
        ),
    ],
    dataset_id: Annotated[
        str | None,
        Form(
            max_length=255,
            description="A stored dataset the model was trained on, by id or name: the service "
            "counts its images and computes its signature. Give this or `signature`, not both.",
            examples=[DATASET_ID],
        ),
    ] = None,
    signature: Annotated[
        UploadFile | None,
        File(description="Or: its signature (.safetensors from /v1/datasets/{id}/signature)"),
    ] = None,
    input_size: Annotated[
        int | None,
        Form(
            ge=8,
            le=1024,
            description="Input side in pixels; default: the architecture's",
            examples=[32],
        ),
    ] = None,
    class_names: Annotated[
        str | None,
        Form(
            max_length=MAX_CLASS_NAMES_CHARS,
            description="JSON list or comma-separated names, one per class; default: the "
            "signature's class names when there are num_classes of them, else class_0, ... "
            "(at most 1 MiB: the size of any one multipart field).",
            examples=["coat,dress,pullover,shirt,top"],
        ),
    ] = None,
) -> Source:
    """Check the weights load into the architecture, attach the signature, add to the zoo."""
    names = _parse_names(class_names)
    # Before anything is read, computed or built for it.
    service.check_upload(
        ctx.settings,
        architecture,
        num_classes,
        input_size,
        names,
        dataset_id,
        signature is not None,
    )
    uploads = [weights.file] + ([signature.file] if signature is not None else [])
    fields = (architecture, num_classes, name, dataset_id, input_size, class_names)
    digest = digest_files(uploads, *fields)
    with idempotent(state.sessions, ctx.session, "sources", idempotency_key, digest) as claim:
        if claim.replay_id is not None:
            response.headers["Idempotent-Replayed"] = "true"
            source = service.get_source(ctx.session, claim.replay_id)
        else:
            source = service.register_upload(
                ctx,
                name=name,
                architecture=architecture,
                num_classes=num_classes,
                weights=weights.file,
                signature=signature.file if signature is not None else None,
                dataset_id=dataset_id,
                class_names=names,
                input_size=input_size,
            )
            claim.complete(source.id)
    response.headers["Location"] = f"/v1/sources/{source.id}"
    return source


def _parse_names(raw: str | None) -> list[str] | None:
    if raw is None or not raw.strip():
        return None
    if raw.lstrip().startswith("["):
        try:
            names = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"class_names is not valid JSON: {exc}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidInput("class_names must be a list of strings")
        return names
    return [name.strip() for name in raw.split(",")]


@router.get(
    "",
    response_model=Page[SourceOut],
    summary="List sources, newest first",
    responses=PAGE_PROBLEMS,
)
def list_sources(
    session: SessionDep,
    principal: PrincipalDep,
    page_size: PageSize = 50,
    page_token: PageToken = None,
) -> Page[SourceOut]:
    """One page of the zoo; follow ``next_page_token`` for more."""
    rows, next_token = service.list_sources(session, page_size, page_token)
    return Page[SourceOut](
        items=[source_out(r, principal) for r in rows], next_page_token=next_token
    )


@router.get(
    "/map.png",
    response_class=Response,
    responses={200: PNG},
    summary="Map of the zoo (and a target) in feature space",
)
def zoo_map(
    ctx: ContextDep,
    target_dataset_id: Annotated[
        str | None,
        Query(
            max_length=255,
            description="A dataset to place on the map among the sources, by its id or name "
            "(left out: the zoo alone).",
        ),
    ] = None,
) -> Response:
    """MDS of the Jensen-Shannon distances between signatures; marker size ~ log(n)."""
    points = service.zoo_points(ctx, target_dataset_id)
    png = plots.zoo_map(points.names, points.means, points.sizes, points.eps, points.target)
    return Response(png, media_type="image/png")


@router.get("/{source_id}", response_model=SourceOut, summary="Get one source")
def get_source(session: SessionDep, principal: PrincipalDep, source_id: SourceId) -> SourceOut:
    """Architecture, classes, training-set size and signature summary of a source."""
    return source_out(service.get_source(session, source_id), principal)


@router.get(
    "/{source_id}/weights",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
    summary="Download a source's weights (safetensors)",
)
def download_weights(state: StateDep, session: SessionDep, source_id: SourceId) -> FileResponse:
    """The weights file exactly as registered."""
    source = service.get_source(session, source_id)
    return FileResponse(
        service.weights_path(state.store, source),
        media_type="application/octet-stream",
        filename=f"{source.name}.safetensors",
    )


@router.delete(
    "/{source_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a source",
)
def delete_source(
    state: StateDep, session: SessionDep, principal: PrincipalDep, source_id: SourceId
) -> Response:
    """Remove the source from the zoo, its files and the ranking index (409 while a job
    needs it; a source of the shared zoo: operators only)."""
    service.check_may_delete(session, source_id, principal)  # before jobs are looked at
    ensure_no_active_job_uses(session, source_id=source_id)
    service.delete_source(session, state.store, state.index, source_id, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{source_id}/publish",
    response_model=SourceOut,
    summary="Publish a project's source into the shared zoo (operators)",
)
def publish_source(session: SessionDep, principal: PrincipalDep, source_id: SourceId) -> Source:
    """Every project ranks over the shared zoo; only operators add to it or change it."""
    return service.publish_source(session, source_id, principal)
